"""Open what `ftc export` (or training's best/) wrote, for inference: check every file's
sha256 against the manifest first (exit 6 on a mismatch), then load the artefact with
its format's loader, the same one the parity gate ran."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fine_tune_cli.console import set_progress_every
from fine_tune_cli.errors import RecipeError
from fine_tune_cli.export.base import RunFn
from fine_tune_cli.manifest import MANIFEST, verify_manifest
from fine_tune_cli.recipe import Recipe, validate_tree
from fine_tune_cli.runs import BEST, inspect_path, locate, searched


@dataclass
class LoadedModel:
    root: Path
    format: str
    recipe: Recipe
    labels: list[str]
    tokenizer: Any  # None for image models: they carry preprocessor_config.json instead
    run: RunFn
    manifest: dict[str, Any]


def resolve_model_dir(path: Path) -> Path:
    """An export dir or best/ as given, or a run dir's best/ (a name that is not a path:
    looked up under $FTC_RUNS_DIR, then ./runs)."""
    info = inspect_path(locate(path))
    if info.kind == "missing":
        raise RecipeError(
            f"{path}: no such model dir (an export dir, best/ or a run dir){searched(path)}"
        )
    path = info.path
    if info.has_manifest:
        return path
    if info.kind == "run":
        if (path / BEST / MANIFEST).is_file():
            return path / BEST
        raise RecipeError(f"{path}: run dir has no best/ model yet")
    raise RecipeError(f"{path}: not an export dir, best/ or run dir (no {MANIFEST})")


def load_exported(path: Path) -> LoadedModel:
    from fine_tune_cli.export.formats import EXPORTERS
    from fine_tune_cli.tasks import task_for

    root = resolve_model_dir(path)
    manifest = verify_manifest(root)  # before anything is read from the files
    if "recipe" not in manifest:
        hint = " (a checkpoint: use its run dir or an export)" if "step" in manifest else ""
        raise RecipeError(f"{root}: {MANIFEST} carries no recipe{hint}")
    recipe = validate_tree(manifest["recipe"], default_origin=str(root / MANIFEST))
    set_progress_every(recipe.log.progress_every)  # predict's progress lines
    fmt = manifest.get("format", "hf")
    if fmt == "torchscript":  # written by ftc before pt2 replaced torch.jit (deprecated)
        raise RecipeError(
            f"{root}: a TorchScript export from an older ftc, no longer read; re-export it"
            " with `ftc export RUN_DIR --format pt2`"
        )
    if fmt not in EXPORTERS:
        raise RecipeError(f"{root}: {EXPORTERS.unknown_message(fmt)}")
    artefact = manifest.get("artefact") or {"file": "model.safetensors"}
    return LoadedModel(
        root=root,
        format=fmt,
        recipe=recipe,
        labels=list(manifest.get("labels") or _config_labels(root)),
        tokenizer=task_for(recipe.model).saved_tokenizer(root),
        run=EXPORTERS.get(fmt).load(root, artefact, recipe),
        manifest=manifest,
    )


def _config_labels(root: Path) -> list[str]:
    try:
        id2label = json.loads((root / "config.json").read_text()).get("id2label") or {}
    except (OSError, ValueError):
        return []
    return [id2label[str(i)] for i in range(len(id2label))]
