"""Checkpoints: self-describing step-NNNNNN/ dirs written atomically.

Layout: model.safetensors + config.json (loadable by transformers), trainer_state.pt
(optimizer, schedule, scaler, RNG, data position and format_version; loaded with
weights_only=True), recipe.lock.yaml, manifest.json (sha256), and COMPLETE, written last.
Write order: temp dir -> fsync -> rename -> COMPLETE, so a kill at any point never leaves
a checkpoint that looks complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from fine_tune_cli import formats
from fine_tune_cli.errors import OutputError, RecipeError, output_failure
from fine_tune_cli.manifest import fsync_tree, verify_manifest, write_manifest
from fine_tune_cli.runs import (
    CHECKPOINTS,
    COMPLETE,
    RECIPE_LOCK,
    STEP_PREFIX,
    complete_checkpoints,
    latest_checkpoint,
    step_name,
    vanished,
)

STATE = "trainer_state.pt"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP/FSDP/compile wrappers (what we always save)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def resolve_resume(path: Path) -> Path:
    """--resume PATH: a run dir (newest complete checkpoint) or a checkpoint dir."""
    if (path / COMPLETE).is_file() and (path / STATE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise RecipeError(f"--resume: {path} holds no complete checkpoint")
    return latest


def save_model_dir(
    target: Path,
    model: torch.nn.Module,
    tokenizer: Any | None,
    weights: dict[str, torch.Tensor] | None = None,
    **meta: Any,
) -> None:
    """Write an HF model dir (+ tokenizer + manifest) atomically, replacing `target`.

    `weights`: the full state dict when the model itself is sharded (FSDP).
    """
    if not target.parent.is_dir():  # the run dir was deleted: do not recreate it
        raise OutputError(vanished(target.parent))
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        unwrap(model).save_pretrained(str(tmp), safe_serialization=True, state_dict=weights)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        write_manifest(tmp, **meta)
        fsync_tree(tmp)
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        # Ours, and any a killed writer left (`train` holds the run lock: none is live).
        for stale in (*target.parent.glob(f".old-{target.name}-*"), old):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in target.parent.glob(f".tmp-{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    except BaseException as exc:  # a full disk, a signal: never leave the temp dir behind
        shutil.rmtree(tmp, ignore_errors=True)
        failed = output_failure(exc, target, writing=True)
        if failed is None:
            raise
        raise failed from None


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    recipe_yaml: str,
    keep_last: int,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    root = run_dir / CHECKPOINTS
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    if not run_dir.is_dir():
        raise OutputError(vanished(run_dir))
    try:
        root.mkdir(exist_ok=True)  # not parents: a deleted run dir must not come back empty
        # Our own temp dir and any a killed writer left half-done: we hold the run lock, so
        # no one else is writing here, and those weights would otherwise stay forever.
        for stale in root.glob(f".tmp-{STEP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        unwrap(model).save_pretrained(str(tmp), safe_serialization=True, state_dict=weights)
        if os.environ.get("FTC_FAULT_KILL_IN_SAVE") == str(step):
            os._exit(137)  # fault injection for tests: die like SIGKILL halfway through a save
        # Through a Python file: a full disk then surfaces as an OSError (errno) behind
        # torch's RuntimeError ("unexpected pos"), which output_failure maps to exit 8.
        with open(tmp / STATE, "wb") as fh:
            torch.save(formats.stamp("checkpoint", state), fh)
        (tmp / RECIPE_LOCK).write_text(recipe_yaml)
        write_manifest(tmp, step=step)
        fsync_tree(tmp)
        if final.exists():  # an incomplete leftover of a killed run
            shutil.rmtree(final)
        os.replace(tmp, final)
        (final / COMPLETE).write_text(f"{step}\n")
        fsync_tree(final)
    except BaseException as exc:  # a full disk (safetensors wraps it), a signal, ...
        shutil.rmtree(tmp, ignore_errors=True)
        if not run_dir.is_dir():
            raise OutputError(vanished(run_dir)) from None
        failed = output_failure(exc, final, writing=True)
        if failed is None:
            raise
        raise failed from None
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model weights, trainer state), after checking the manifest; never unpickles code."""
    from safetensors.torch import load_file

    verify_manifest(path)
    weights = load_file(str(path / "model.safetensors"))
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    return weights, formats.upgrade("checkpoint", state, path / STATE)


def restore_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Put a checkpoint's weights into `model` (the same architecture, freshly built).

    transformers may rename tensors when it saves (v5 writes ViT's layers under their
    legacy names, e.g. `encoder.layer.0.attention.attention.query`), so a plain
    load_state_dict would silently skip them; when names do not line up, transformers'
    own loader (safetensors only) maps them back and every tensor must then match.
    """
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys:
        reloaded = type(model).from_pretrained(
            str(path), config=model.config, local_files_only=True, use_safetensors=True
        )
        model.load_state_dict(reloaded.state_dict())
    model.tie_weights()
