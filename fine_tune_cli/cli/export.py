"""ftc export RUN_DIR|CHECKPOINT [--format hf|onnx|pt2|int8|pruned] [--out DIR] [KEY=VALUE ...]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, run_command
from fine_tune_cli.export import DEPRECATED_FORMATS, FORMATS

FORMAT_CHOICES = [*FORMATS, *DEPRECATED_FORMATS]


def _complete_format(incomplete: str) -> list[str]:
    return [name for name in FORMAT_CHOICES if name.startswith(incomplete)]


def export(
    target: str = typer.Argument(
        ..., metavar="RUN_DIR", help="Run dir (exports its best/) or one of its checkpoint dirs."
    ),
    overrides: list[str] | None = typer.Argument(
        None,
        metavar="KEY=VALUE",
        help="export.* recipe keys, e.g. export.max_abs_diff=1e-4 (YAML scalars).",
    ),
    fmt: str = typer.Option(
        "hf",
        "--format",
        metavar="[" + "|".join(FORMATS) + "]",
        autocompletion=_complete_format,
        help="hf: HF model dir (safetensors). onnx: model.onnx + config.json + tokenizer"
        " (optimum's layout; onnxruntime). pt2: torch.export program (model.pt2;"
        " torch.export.load). int8: onnx with int8 weights. pruned: magnitude-pruned HF dir."
        " torchscript: deprecated alias that writes pt2 (into export/torchscript/).",
    ),
    out: str | None = typer.Option(
        None, "--out", metavar="DIR", help="Default: RUN_DIR/export/<format>/."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Export a trained model, gated on parity with the torch model on validation data.

    Every export dir holds a manifest.json (sha256 of each file, parity figures,
    tolerances) and config.json + tokenizer (or image processor) beside the artefact, so
    transformers, onnxruntime or torch open it without ftc. onnx and int8 need the
    export extra: pip install 'fine_tune_cli[export]'.

    \b
    Examples:
      ftc export runs/demo --format onnx
      ftc export runs/demo --format pt2 --out /srv/models/spam export.max_abs_diff=1e-4
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.export.run import run_export

        return run_export(target, fmt=fmt, out=out, overrides=overrides or [], overwrite=overwrite)

    def human(p: dict[str, Any]) -> None:
        from fine_tune_cli.export.run import summary_lines

        print(f"exported {p['format']} to {p['outputs']['dir']} ({p['bytes'] / 1e6:.1f} MB)")
        for line in summary_lines(p):
            print(f"  {line}")

    run_command("export", json_mode, body, human)
