"""ftc sweep RECIPE SPACE.yaml [key=value ...] [--out DIR] [--trials N] [--parallel N]
[--resume] [--json]"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, OVERRIDES_ARG, RECIPE_ARG, run_command

SPACE_ARG = typer.Argument(
    ...,
    metavar="SPACE",
    help="SPACE.yaml (metric, direction, trials, sampler, seed, space), or a bundled"
    " example space by name (demo-space).",
)


def sweep(
    recipe: str = RECIPE_ARG,
    space: str = SPACE_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    out: Path | None = typer.Option(
        None, "--out", metavar="DIR", help="Sweep dir (default $FTC_RUNS_DIR/<recipe>-sweep)."
    ),
    trials: int | None = typer.Option(
        None, "--trials", min=1, metavar="N", help="Trials in the study (SPACE's trials)."
    ),
    parallel: int = typer.Option(
        1, "--parallel", min=1, metavar="N", help="Trials run at once (cores split between)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the sweep in --out (killed trials are rerun)."
    ),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Search recipe keys with Optuna; each trial is a run dir SWEEP_DIR/trial-NNN.

    Trial 0 runs the recipe's own values; bad trials are pruned at validation evals.
    Writes leaderboard.md, best-recipe.yaml and report.html; the study is SWEEP_DIR/study.db
    (optuna-dashboard sqlite:///SWEEP_DIR/study.db).

    \b
    Examples:
      ftc sweep demo demo-space
      ftc sweep demo my-space.yaml train.epochs=2 --trials 20 --parallel 2
      ftc sweep demo my-space.yaml --out runs/demo-sweep --resume --json
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.optional import require
        from fine_tune_cli.recipe import load_recipe
        from fine_tune_cli.runs import default_runs_dir
        from fine_tune_cli.sweep.space import load_space

        loaded = load_recipe(recipe, overrides or [])
        found = load_space(space, loaded.raw)
        require("optuna", "ftc sweep")
        from fine_tune_cli.sweep import report
        from fine_tune_cli.sweep.study import SweepPlan, run_sweep, storage_url

        plan = SweepPlan(
            loaded=loaded,
            space=found,
            overrides=list(overrides or []),
            out=(out or default_runs_dir() / f"{loaded.recipe.name}-sweep").resolve(),
            trials=trials or found.spec.trials,
            parallel=parallel,
            resume=resume,
        )
        study = run_sweep(plan)
        rows = report.leaderboard(study, found.spec.direction)
        result = report.summary(study, plan)
        result["importances"], result["importances_note"] = report.importances(study)
        outputs = report.write_report(plan, rows, result)
        best = result["best"]
        payload: dict[str, Any] = {
            "run_dir": best["run_dir"] if best else None,
            "sweep_dir": str(plan.out),
            "study": {"storage": storage_url(plan.out), "study_name": plan.study_name},
            "metric": found.spec.metric,
            "direction": found.spec.direction,
            "metrics": {found.spec.metric: best["value"]} if best else {},
            **result,
            "verdict": report.verdict_line(found.spec.metric, result),
            "trials": rows,
            "outputs": outputs,
        }
        if best is None:  # exit with what the trials died of (4 diverged, 3 data, ...)
            codes = [r["exit_code"] for r in rows if r["state"] == "failed" and r["exit_code"]]
            message = f"no trial completed; see {outputs['leaderboard']}"
            payload.update(status="error", exit_code=codes[0] if codes else 1, message=message)
        if json_mode:  # the table still goes to a person, on stderr
            _print_leaderboard(payload, sys.stderr)
        return payload

    def human(p: dict[str, Any]) -> None:
        _print_leaderboard(p, sys.stdout)

    run_command("sweep", json_mode, body, human)


def _print_leaderboard(p: dict[str, Any], file: Any) -> None:
    from fine_tune_cli.sweep.report import table_lines

    keys = list(dict.fromkeys(k for r in p["trials"] for k in r["params"]))
    for line in table_lines(p["trials"], p["metric"], keys):
        file.write(line + "\n")
    file.write(p["verdict"] + "\n")
    file.write(f"sweep dir: {p['sweep_dir']}  (report: {p['outputs'].get('report')})\n")
    file.flush()
