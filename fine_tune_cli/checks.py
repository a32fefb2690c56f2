"""Checks that need no training: `ftc train --dry-run` and `ftc recipes validate`."""

from __future__ import annotations

from typing import Any

from fine_tune_cli.recipe import LoadedRecipe

SAMPLE_ROWS = 2000


def check_recipe(loaded: LoadedRecipe, *, build_model: bool) -> dict[str, Any]:
    """Data readable, columns and labels present, model builds, cache and run-dir status.
    Raises the first DataError (exit 3); recipe errors were raised by loading (exit 2)."""
    from fine_tune_cli.data.prepare import data_hash, prepared_path
    from fine_tune_cli.data.store import COMPLETE
    from fine_tune_cli.hub import provenance as hub_provenance
    from fine_tune_cli.runs import RunDir
    from fine_tune_cli.tasks import task_for
    from fine_tune_cli.trackers import check_installed

    recipe = loaded.recipe
    task = task_for(recipe.model)
    checks: list[dict[str, Any]] = [{"check": "recipe", "ok": True, "detail": loaded.source}]
    trackers = check_installed(recipe)  # a missing one: exit 2 with the pip line, as train
    checks.append({"check": "trackers", "ok": True, "detail": ", ".join(trackers) or "none"})
    for key, hub in hub_provenance(recipe).items():  # what each Hub id resolves to, offline
        detail = f"{key}: {hub['id']} -> commit {hub['sha']} ({hub['path']})"
        checks.append({"check": "hub id", "ok": True, "detail": detail})
    digest = data_hash(recipe)  # DataError if the data file is missing
    source = recipe.data.source.model_copy(
        update={"limit": min(recipe.data.source.limit or SAMPLE_ROWS, SAMPLE_ROWS)}
    )
    sample = task.read_source(source, task.needs_labels)
    labels = sorted({r["label"] for r in sample if r.get("label") is not None})
    detail = (
        f"{recipe.data.source.path or recipe.data.source.format}: first {len(sample)} rows readable"
    )
    if labels:
        detail += f"; labels seen: {', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''}"
    checks.append({"check": "data", "ok": True, "detail": detail})
    cached = (prepared_path(recipe, digest) / COMPLETE).is_file()
    checks.append(
        {
            "check": "prepared cache",
            "ok": True,
            "detail": f"{'hit' if cached else 'missing (train will prepare it)'}:"
            f" {prepared_path(recipe, digest)}",
        }
    )
    params = None
    if build_model:
        from fine_tune_cli.models.registry import build_model

        names = tuple(f"label_{i}" for i in range(max(2, len(labels))))
        model = build_model(recipe.model, task.sample_context(recipe, sample, names))
        params = sum(p.numel() for p in model.parameters())
        checks.append({"check": "model", "ok": True, "detail": f"builds; {params:,} parameters"})
    run = RunDir(recipe.run_dir())
    state = (
        "complete run (needs --overwrite or --resume)"
        if run.is_complete()
        else "unfinished run (use --resume auto)"
        if run.has_checkpoints()
        else "new"
    )
    checks.append({"check": "run dir", "ok": True, "detail": f"{run.path}: {state}"})
    return {
        "run_dir": str(run.path),
        "checks": checks,
        "hash": digest,
        "cache_hit": cached,
        "parameters": params,
    }


def print_check(payload: dict[str, Any]) -> None:
    for item in payload["checks"]:
        print(f"  ok  {item['check']:<15} {item['detail']}")
    print("recipe is valid")
