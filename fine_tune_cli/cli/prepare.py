"""ftc prepare RECIPE [key=value ...] [--force] [--allow-download] [--json]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import (
    ALLOW_DOWNLOAD_OPTION,
    JSON_OPTION,
    OVERRIDES_ARG,
    RECIPE_ARG,
    load_recipe_for_run,
    run_command,
)


def prepare(
    recipe: str = RECIPE_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    force: bool = typer.Option(False, "--force", help="Rebuild even when cached."),
    allow_download: bool = ALLOW_DOWNLOAD_OPTION,
    json_mode: bool = JSON_OPTION,
) -> None:
    """Build (or find in the cache) the prepared dataset of a recipe.

    \b
    Examples:
      ftc prepare demo
      ftc prepare my-recipe.yaml data.max_length=256 --force --json
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.data.prepare import prepare_dataset

        loaded = load_recipe_for_run(recipe, overrides, allow_download)
        prepared, cached = prepare_dataset(loaded.recipe, force=force)
        counts = {name: len(split) for name, split in prepared.splits.items()}
        return {
            "cache_hit": cached,
            "hash": prepared.hash,
            "outputs": {"prepared": str(prepared.path)},
            "splits": counts,
            "labels": prepared.label_names,
            "pipeline": prepared.manifest.get("pipeline", []),
        }

    def human(p: dict[str, Any]) -> None:
        state = "cache hit: reused" if p["cache_hit"] else "prepared"
        print(f"{state} {p['outputs']['prepared']}")
        for step in p["pipeline"]:
            print(f"  {step['step']:<20} {step['in']:>8} -> {step['out']}")
        print("  splits: " + ", ".join(f"{k} {v}" for k, v in p["splits"].items()))
        if p["labels"]:
            print(f"  labels: {', '.join(p['labels'][:20])}")

    run_command("prepare", json_mode, body, human)
