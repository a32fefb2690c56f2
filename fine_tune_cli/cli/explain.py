"""ftc explain MODEL_DIR|RUN_DIR INPUT|- [--target LABEL] [--method ig|rollout]
[--baseline pad|zeros] [--steps N] [--out DIR] [--json]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, run_command


def explain(
    model_dir: str = typer.Argument(
        ...,
        metavar="MODEL_DIR|RUN_DIR",
        help="Run dir, its best/, a checkpoint or an hf export of a text or image classifier.",
    ),
    source: str = typer.Argument(
        ...,
        metavar="INPUT",
        help="As for ftc predict. Texts: csv/jsonl/txt file. Images: image file, folder or"
        " csv/jsonl manifest. - reads stdin (texts; image paths one per line).",
    ),
    target: str | None = typer.Option(
        None, "--target", metavar="LABEL", help="Explain this class. Default: the predicted one."
    ),
    method: str = typer.Option(
        "ig",
        "--method",
        metavar="ig|rollout",
        help="ig: Integrated Gradients (captum) over the input embeddings; rollout: attention"
        " rollout (fast, class-agnostic).",
    ),
    baseline: str = typer.Option(
        "pad",
        "--baseline",
        metavar="pad|zeros",
        help="IG's starting point: the input with its content padded out (pad tokens; a"
        " black image) or an all-zero embedding.",
    ),
    steps: int = typer.Option(
        50,
        "--steps",
        metavar="N",
        help="IG interpolation steps; an input whose scores miss p(input) - p(baseline) by"
        " over 5% is redone with 4x the steps, up to 16x.",
    ),
    out: str = typer.Option(
        "explanations",
        "--out",
        metavar="DIR",
        help="Where explanations.jsonl and explanations.html go.",
    ),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Explain a classifier's predictions: which words or image patches made the call.

    Scores per token (summed into words) or per image patch, for the predicted class or
    --target. Writes DIR/explanations.jsonl (tokens, words or the patch grid with scores,
    label, probability, IG's convergence delta) and DIR/explanations.html (words shaded,
    images under a patch heat map; one self-contained file).

    \b
    Examples:
      ftc explain runs/demo emails.jsonl --out why/
      echo "win a free cruise now" | ftc explain runs/demo - --target spam --json
      ftc explain runs/vit-digits digit.png --method rollout
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.explain.run import run_explain

        return run_explain(
            model_dir,
            source,
            target=target,
            method=method,
            baseline=baseline,
            steps=steps,
            out=out,
        )

    def human(p: dict[str, Any]) -> None:
        for row in p["explanations"]:
            top = ", ".join(
                f"{t.get('word', t.get('patch'))} {t['score']:+.3f}" for t in row["top"]
            )
            print(
                f"{row['id']}: {row['label']} ({row['prob']:.3f}); {row['target']} <- {top};"
                f" without them p {row['target_prob_without_top']:.3f}"
            )
        print(f"wrote {p['outputs']['jsonl']} and {p['outputs']['html']}")

    run_command("explain", json_mode, body, human)
