"""ftc export RUN_DIR|CHECKPOINT [--format hf] [--out DIR] [export.key=value ...]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, OVERRIDES_ARG, run_command


def export(
    target: str = typer.Argument(..., help="Run dir or checkpoint dir."),
    overrides: list[str] | None = OVERRIDES_ARG,
    fmt: str = typer.Option("hf", "--format", help="hf, onnx, torchscript, int8 or pruned."),
    out: str | None = typer.Option(None, "--out", help="Default: RUN_DIR/export/<format>/."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Export a trained model, gated on parity with the torch model."""

    def body() -> dict[str, Any]:
        from fine_tune_cli.export.run import run_export

        return run_export(target, fmt=fmt, out=out, overrides=overrides or [], overwrite=overwrite)

    def human(p: dict[str, Any]) -> None:
        from fine_tune_cli.export.run import summary_lines

        print(f"exported {p['format']} to {p['outputs']['dir']} ({p['bytes'] / 1e6:.1f} MB)")
        for line in summary_lines(p):
            print(f"  {line}")

    run_command("export", json_mode, body, human)
