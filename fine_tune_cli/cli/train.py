"""ftc train RECIPE [key=value ...] [--resume auto|PATH] [--dry-run] [--overwrite]
[--allow-download] [--json]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import (
    ALLOW_DOWNLOAD_OPTION,
    JSON_OPTION,
    OVERRIDES_ARG,
    RECIPE_ARG,
    load_recipe_for_run,
    print_metrics_table,
    run_command,
)


def train(
    recipe: str = RECIPE_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    resume: str | None = typer.Option(
        None,
        "--resume",
        metavar="auto|PATH",
        help="auto (newest complete checkpoint) or a run/checkpoint dir.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate everything; train nothing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run."),
    nproc: int = typer.Option(
        1, "--nproc", min=1, metavar="N", help="Processes (re-launches via torchrun)."
    ),
    allow_download: bool = ALLOW_DOWNLOAD_OPTION,
    json_mode: bool = JSON_OPTION,
) -> None:
    """Train a model (prepares the data first when its cache is missing).

    \b
    Examples:
      ftc train demo train.epochs=2 optim.lr=1e-4
      ftc train my-recipe.yaml --resume auto --json
      ftc train demo model.init_from=bert-base-uncased --allow-download
    """

    def body() -> dict[str, Any]:
        loaded = load_recipe_for_run(recipe, overrides, allow_download)
        if nproc > 1 and not dry_run:
            return _distributed(loaded)
        if dry_run:
            from fine_tune_cli.checks import check_recipe
            from fine_tune_cli.runs import RunDir

            report = check_recipe(loaded, build_model=True)
            if not resume and not overwrite:  # the real run would refuse it: so does this
                RunDir(loaded.recipe.run_dir()).check_fresh_start(overwrite=False)
            return report
        from fine_tune_cli.engine.run import run_training

        return run_training(loaded, resume=resume, overwrite=overwrite)

    def _distributed(loaded: Any) -> dict[str, Any]:
        """Prepare once (errors surface here with their own codes), then torchrun."""
        from fine_tune_cli.data.prepare import prepare_dataset
        from fine_tune_cli.engine.launch import relaunch_with_torchrun
        from fine_tune_cli.runs import RunDir

        if not resume and not overwrite:
            RunDir(loaded.recipe.run_dir()).check_fresh_start(overwrite=False)
        prepare_dataset(loaded.recipe)
        args = [recipe, *(overrides or [])]
        args += ["--resume", resume] if resume else []
        args += ["--overwrite"] if overwrite else []
        relaunch_with_torchrun(nproc, args)
        run = RunDir(loaded.recipe.run_dir())
        summary = run.provenance().get("summary", {})
        last_eval = next((r for r in reversed(run.history()) if r.get("split") == "validation"), {})
        metrics = {k[5:]: v for k, v in last_eval.items() if k.startswith("eval_")}
        metrics["best_step"] = summary.get("best_step")
        return {"run_dir": str(run.path), "metrics": metrics, "processes": nproc, **summary}

    def human(p: dict[str, Any]) -> None:
        if dry_run:
            from fine_tune_cli.checks import print_check

            print_check(p)
            return
        print(f"run dir: {p['run_dir']}  ({p['steps']} steps, {p['seconds']}s)")
        print_metrics_table(f"validation metrics (best step {p['best_step']}):", p["metrics"])

    run_command("train", json_mode, body, human)
