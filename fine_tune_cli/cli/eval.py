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
        None,
        "--compare",
        metavar="RUN_DIR",
        help="Another run, evaluated on the same split: a side-by-side table (this run |"
        " other run | delta | better) on the terminal, in --json and in the report.",
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

    Classifiers are also scored against a scikit-learn baseline fitted on the run's
    train split (baseline_accuracy, baseline_f1_macro; recipe eval.baseline: false
    skips it).

    \b
    Examples:
      ftc eval runs/demo --split test
      ftc eval runs/demo --fail-under f1_macro=0.9 --json
      ftc eval runs/demo --compare runs/demo-v1
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.evaluation.evaluate import run_eval

        return run_eval(
            target, split=split, data_file=data, compare=compare, fail_under=fail_under or []
        )

    def human(p: dict[str, Any]) -> None:
        if "compare" in p:
            print_compare_table(p)
        else:
            print_metrics_table(f"{p['split']} metrics:", p["metrics"])
        print(f"report: {p['outputs'].get('report_html')}")

    run_command("eval", json_mode, body, human)


def print_compare_table(p: dict[str, Any]) -> None:
    """metric | this run | other run | delta | better, aligned (plain text for CI logs);
    metrics only one side has are listed after the table."""
    table = p["compare"]["table"]
    this_name, other_name = p.get("run_dir") or "this run", p["compare"]["run_dir"]
    print(f"{p['split']}: {this_name} (this) vs {other_name} (other)")
    rows = [["metric", "this run", "other run", "delta", "better"]]
    for name, e in table.items():
        rows.append(
            [
                name,
                _num(e["this"]),
                _num(e["other"]),
                _num(e["delta"], sign=True),
                e["better"] or "",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:4], widths[1:4], strict=True)
        ]
        print("  " + "  ".join(cells) + "  " + row[4])
    only = [k for k in p["metrics"] if k not in table]
    if only:
        print("  only this run: " + ", ".join(only))


def _num(value: Any, sign: bool = False) -> str:
    if isinstance(value, float):
        return f"{value:+.4f}" if sign else f"{value:.4f}"
    return f"{value:+d}" if sign else str(value)
