"""ftc runs list [DIR]: what ran, how it ended, and where it got to."""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, run_command

app = typer.Typer(help="Inspect run directories.", no_args_is_help=True)


@app.command("list")
def list_runs(
    directory: str = typer.Argument(
        None,
        metavar="DIR",
        help="Folder holding run dirs (default: $FTC_RUNS_DIR, else ./runs); a name that is"
        " not a path is looked up under them.",
    ),
    json_mode: bool = JSON_OPTION,
) -> None:
    """List the runs under DIR: status, task, steps, best metric, resumability.

    \b
    Examples:
      ftc runs list
      ftc runs list /data/runs --json
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.errors import RecipeError
        from fine_tune_cli.runs import default_runs_dir, locate, searched
        from fine_tune_cli.runs import list_runs as scan

        root = locate(directory) if directory else default_runs_dir()
        if not root.is_dir():
            where = searched(directory) if directory else ""
            raise RecipeError(
                f"{root}: no such directory (pass the folder that holds run dirs){where}"
            )
        return {"outputs": {"dir": str(root)}, "runs": scan(root)}

    def human(p: dict[str, Any]) -> None:
        runs = p["runs"]
        if not runs:
            print(f"no runs in {p['outputs']['dir']}")
            return
        header = ["NAME", "STATUS", "MODEL", "STEP", "BEST", "STARTED"]
        rows = [header]
        for r in runs:
            best = ""
            if r["best_metric"] and isinstance(r["best_value"], int | float):
                best = f"{r['best_metric']}={r['best_value']:.4g}@{r['best_step']}"
            status = r["status"] + (" (resumable)" if r["resumable"] else "")
            model = "/".join(str(x) for x in (r["family"], r["task"]) if x)
            rows.append([r["name"], status, model, str(r["step"]), best, r["started"] or ""])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

    run_command("runs list", json_mode, body, human)
