"""Checks that need no training: `ftc train --dry-run` and `ftc recipes validate`."""

from __future__ import annotations

from typing import Any

from fine_tune_cli.recipe import LoadedRecipe

SAMPLE_ROWS = 2000


def check_recipe(loaded: LoadedRecipe, *, build_model: bool) -> dict[str, Any]:
    """Data readable, columns and labels present, model builds, cache and run-dir status.
    Raises the first DataError (exit 3); recipe errors were raised by loading (exit 2)."""
    from fine_tune_cli.data.prepare import data_hash, encoder_name, prepared_path
    from fine_tune_cli.data.sources import read_source
    from fine_tune_cli.data.store import COMPLETE
    from fine_tune_cli.hub import provenance as hub_provenance
    from fine_tune_cli.runs import RunDir

    recipe = loaded.recipe
    checks: list[dict[str, Any]] = [{"check": "recipe", "ok": True, "detail": loaded.source}]
    for key, hub in hub_provenance(recipe).items():  # what each Hub id resolves to, offline
        detail = f"{key}: {hub['id']} -> commit {hub['sha']} ({hub['path']})"
        checks.append({"check": "hub id", "ok": True, "detail": detail})
    digest = data_hash(recipe)  # DataError if the data file is missing
    source = recipe.data.source.model_copy(
        update={"limit": min(recipe.data.source.limit or SAMPLE_ROWS, SAMPLE_ROWS)}
    )
    is_image = encoder_name(recipe) == "image"
    sample = read_source(source, need_label=recipe.model.task == "classification", images=is_image)
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
        geometry = None
        if is_image:
            from fine_tune_cli.data.images import sample_geometry

            geometry = sample_geometry(recipe, sample)
        params = _count_params(recipe, max(2, len(labels)), geometry)
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


def _count_params(recipe: Any, num_labels: int, geometry: tuple[int, int] | None = None) -> int:
    from fine_tune_cli.data.tokenizers import load_tokenizer, tokenizer_source
    from fine_tune_cli.models.registry import BuildContext, build_model, resolve_init_dir

    if geometry is not None:  # image family: (side, channels) instead of a tokenizer
        ctx = BuildContext(
            label_names=tuple(f"label_{i}" for i in range(num_labels)),
            image_size=geometry[0],
            num_channels=geometry[1],
            init_dir=resolve_init_dir(recipe.model.init_from) if recipe.model.init_from else None,
        )
        return sum(p.numel() for p in build_model(recipe.model, ctx).parameters())
    _, tok_dir = tokenizer_source(recipe)
    vocab = len(load_tokenizer(tok_dir)) if tok_dir else recipe.data.tokenizer.vocab_size
    ctx = BuildContext(
        vocab_size=vocab,
        label_names=tuple(f"label_{i}" for i in range(num_labels)),
        max_length=recipe.data.max_length,
        pad_token_id=0,
        init_dir=resolve_init_dir(recipe.model.init_from) if recipe.model.init_from else None,
    )
    model = build_model(recipe.model, ctx)
    return sum(p.numel() for p in model.parameters())


def print_check(payload: dict[str, Any]) -> None:
    for item in payload["checks"]:
        print(f"  ok  {item['check']:<15} {item['detail']}")
    print("recipe is valid")
