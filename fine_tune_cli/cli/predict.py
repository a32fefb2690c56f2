"""ftc predict MODEL_DIR INPUT|- [--out FILE|-] [--json]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, run_command


def predict(
    model_dir: str = typer.Argument(
        ..., metavar="MODEL_DIR", help="Export dir (any format), best/ or a run dir."
    ),
    source: str = typer.Argument(
        ...,
        metavar="INPUT",
        help="Texts: csv/jsonl/txt file. Images: image file, folder or csv/jsonl manifest."
        " - reads stdin (texts; image paths one per line).",
    ),
    out: str = typer.Option(
        "predictions.jsonl",
        "--out",
        metavar="FILE|-",
        help="Predictions file (jsonl); - writes to stdout.",
    ),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Predict labels for new texts or images with an exported or trained model.

    MODEL_DIR is any `ftc export` dir (hf, onnx, pt2, int8, pruned), a run's best/ or a
    run dir. Inputs go through the recipe's cleaning steps and tokenizer (or image steps)
    as in training; each gets one jsonl line: id, label, score, per-class probabilities.

    \b
    Examples:
      ftc predict runs/demo/export/onnx new_emails.jsonl --out predictions.jsonl
      echo "win a free cruise now" | ftc predict runs/demo - --out -
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.predict import run_predict

        return run_predict(model_dir, source, out=out, json_mode=json_mode)

    def human(p: dict[str, Any]) -> None:
        counts = ", ".join(f"{k} {v}" for k, v in p["label_counts"].items())
        line = f"predicted {p['count']} inputs ({counts}) with {p['format']} model {p['model_dir']}"
        if p["outputs"]["predictions"] == "-":
            return  # stdout carries the predictions; the log line on stderr says the rest
        print(f"{line}\n  wrote {p['outputs']['predictions']}")

    run_command("predict", json_mode, body, human)
