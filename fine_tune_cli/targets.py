"""Resolve what eval/export are pointed at: a run dir, a checkpoint or a model dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fine_tune_cli.console import set_progress_every
from fine_tune_cli.errors import IntegrityError, RecipeError
from fine_tune_cli.recipe import Recipe, validate_tree
from fine_tune_cli.runs import (
    EVAL,
    MODEL_CONFIG,
    RECIPE_LOCK,
    RunDir,
    inspect_path,
    locate,
    read_recipe_lock,
    searched,
)


@dataclass
class Target:
    run: RunDir | None
    model_dir: Path
    recipe: Recipe


def resolve_target(path: str | Path) -> Target:
    """eval/export: a run dir (its best/, else its newest checkpoint), a checkpoint, or a
    model dir made by ftc (its manifest carries the recipe). A name that is not a path is
    looked up under $FTC_RUNS_DIR, then ./runs."""
    target = _resolve(locate(path))
    set_progress_every(target.recipe.log.progress_every)  # eval/export progress lines
    return target


def _resolve(path: Path) -> Target:
    info = inspect_path(path)
    if info.kind == "missing":
        raise RecipeError(f"{path}: no such run dir, checkpoint or model dir{searched(path)}")
    if info.kind == "run":
        model_dir = info.best or info.latest
        if model_dir is None:
            raise RecipeError(f"{path}: run dir holds no model yet (no best/ or checkpoint)")
        return Target(RunDir(path), model_dir, read_recipe_lock(path / RECIPE_LOCK))
    if info.kind == "checkpoint" and info.run is not None:
        return Target(RunDir(info.run), path, read_recipe_lock(path / RECIPE_LOCK))
    if (path / MODEL_CONFIG).is_file():
        manifest = _read_manifest(path)
        if "recipe" not in manifest:
            raise RecipeError(f"{path}: model dir has no recipe in manifest.json (not made by ftc)")
        return Target(_owning_run(path, manifest), path, validate_tree(manifest["recipe"]))
    raise RecipeError(
        f"{path}: not a run dir, checkpoint or model dir (no {RECIPE_LOCK} or config.json)"
    )


def _owning_run(model_dir: Path, manifest: dict[str, Any]) -> RunDir | None:
    """The run a model dir belongs to: an enclosing run dir (best/, export/<format>/),
    else the run dir its manifest names, if that still exists."""
    for parent in list(model_dir.parents)[:3]:
        if inspect_path(parent).kind == "run":
            return RunDir(parent)
    run_dir = manifest.get("run_dir")
    return RunDir(Path(run_dir)) if run_dir and Path(run_dir).is_dir() else None


def eval_dir(target: Target, split: str) -> Path:
    """Where eval writes: RUN_DIR/eval/<split>/, or beside a stand-alone model dir
    (<dir>.eval/<split>/) — never inside it, where files would break its manifest."""
    if target.run is not None:
        return target.run.path / EVAL / split
    return target.model_dir.with_name(target.model_dir.name + ".eval") / split


def _read_manifest(path: Path) -> dict[str, Any]:
    """The model dir's manifest (migrated; a newer format is exit 2), {} when unreadable."""
    from fine_tune_cli.manifest import read_manifest

    try:
        return read_manifest(path)
    except IntegrityError:
        return {}


def load_model(target: Target) -> Any:
    """Load the target's weights with the transformers Auto class (after sha256 checks)."""
    import transformers

    from fine_tune_cli.manifest import verify_manifest
    from fine_tune_cli.models.registry import get_model

    verify_manifest(target.model_dir)
    entry = get_model(target.recipe.model)
    cls = getattr(transformers, entry.auto_class)
    model = cls.from_pretrained(str(target.model_dir), local_files_only=True, use_safetensors=True)
    model.eval()
    return model


def prepared_for(target: Target) -> Any:
    """The prepared data, encoded with the tokenizer the model was trained with.

    The run's own prepared dir is used when it is still there; otherwise the data is
    prepared again with the model dir's tokenizer (a retrained tokenizer may differ)."""
    from fine_tune_cli.data.prepare import prepare_dataset, prepared_path
    from fine_tune_cli.data.store import COMPLETE, open_prepared
    from fine_tune_cli.data.tokenizers import TOKENIZER_FILES, fingerprint_dir

    recipe = target.recipe
    has_tokenizer = any((target.model_dir / f).is_file() for f in TOKENIZER_FILES)
    if target.run is not None:
        recorded = target.run.provenance().get("data", {})
        path = Path(recorded.get("path", "")) if recorded.get("path") else None
        if recorded.get("hash") and (path is None or not (path / COMPLETE).is_file()):
            # Moved or copied elsewhere (another machine, a cache dir set differently): the
            # store is content-addressed, so the same data is wherever the cache is now.
            path = prepared_path(recipe, recorded["hash"])
        if path is not None and (path / COMPLETE).is_file():
            prepared = open_prepared(path, recorded.get("hash"))
            if not has_tokenizer or fingerprint_dir(path / "tokenizer") == fingerprint_dir(
                target.model_dir
            ):
                return prepared
    if has_tokenizer:
        tokenizer = recipe.data.tokenizer.model_copy(
            update={"kind": "pretrained", "path": str(target.model_dir)}
        )
        model = recipe.model.model_copy(update={"init_from": None})
        recipe = recipe.model_copy(
            update={"data": recipe.data.model_copy(update={"tokenizer": tokenizer}), "model": model}
        )
    prepared, _ = prepare_dataset(recipe)
    return prepared
