"""ftc eval RUN_DIR|CHECKPOINT|MODEL_DIR [--split] [--data] [--compare] [--fail-under] [--json]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, print_metrics_table, run_command


def evaluate(
    target: str = typer.Argument(
        ..., metavar="RUN_DIR", help="Run dir, checkpoint dir or exported model dir."
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        metavar="test|validation|train",
        help="Prepared split to evaluate. Default: test, else validation.",
    ),
    data: str | None = typer.Option(
        None, "--data", metavar="FILE", help="Evaluate a new file instead (run's pipeline)."
    ),
    compare: str | None = typer.Option(
        None, "--compare", metavar="RUN_DIR", help="Another run to compare with."
    ),
    fail_under: list[str] | None = typer.Option(
        None,
        "--fail-under",
        metavar="METRIC=VALUE",
        help="Gate: exit 5 when METRIC is below VALUE (above, for loss-like); repeatable.",
    ),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Evaluate a trained model; write metrics.json and a report with plots.

    \b
    Examples:
      ftc eval runs/demo --split test
      ftc eval runs/demo --fail-under f1_macro=0.9 --json
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.evaluation.evaluate import run_eval

        return run_eval(
            target, split=split, data_file=data, compare=compare, fail_under=fail_under or []
        )

    def human(p: dict[str, Any]) -> None:
        print_metrics_table(f"{p['split']} metrics:", p["metrics"])
        if "compare" in p:
            print_metrics_table(f"delta vs {p['compare']['run_dir']}:", p["compare"]["delta"])
        print(f"report: {p['outputs'].get('report_md')}")

    run_command("eval", json_mode, body, human)
