"""runs.inspect_path: the one "what is this path" resolver (run dir, checkpoint, model or
export dir), and the commands' rules built on it (model.init_from, predict's model dir)."""

from __future__ import annotations

from pathlib import Path

from fine_tune_cli.runs import (
    BEST,
    CHECKPOINTS,
    COMPLETE,
    MANIFEST,
    MODEL_CONFIG,
    RECIPE_LOCK,
    inspect_path,
    step_name,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return path


def _model(path: Path) -> Path:
    """An HF model dir as ftc writes it (config, weights, a manifest that verifies:
    init_from checks it before anything is loaded)."""
    from fine_tune_cli.manifest import write_manifest

    for name in (MODEL_CONFIG, "model.safetensors"):
        _touch(path / name)
    write_manifest(path)
    return path


def _run_dir(root: Path, *, best: bool, steps: list[int], complete: list[int]) -> Path:
    _touch(root / RECIPE_LOCK)
    if best:
        _model(root / BEST)
    for step in steps:
        _touch(root / CHECKPOINTS / step_name(step) / RECIPE_LOCK)
        ckpt = _model(root / CHECKPOINTS / step_name(step))
        if step in complete:
            _touch(ckpt / COMPLETE)
    return root


def test_each_kind_of_path(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run", best=True, steps=[2, 4, 6], complete=[2, 4])
    info = inspect_path(run)
    assert (info.kind, info.run, info.best) == ("run", run, run / BEST)
    assert info.latest == run / CHECKPOINTS / "step-000004"  # step 6 never completed

    ckpt = inspect_path(run / CHECKPOINTS / "step-000002")
    assert (ckpt.kind, ckpt.run, ckpt.latest) == ("checkpoint", run, None)

    best = inspect_path(run / BEST)
    assert (best.kind, best.run, best.has_manifest) == ("model", None, True)

    export = _touch(tmp_path / "onnx" / MANIFEST).parent  # an export without config.json
    assert inspect_path(export).kind == "model"
    assert inspect_path(tmp_path / "nowhere").kind == "missing"
    (tmp_path / "empty").mkdir()
    assert inspect_path(tmp_path / "empty").kind == "other"


def test_a_run_without_best_points_at_its_newest_complete_checkpoint(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run", best=False, steps=[1, 3], complete=[1, 3])
    info = inspect_path(run)
    assert info.best is None
    assert info.latest == run / CHECKPOINTS / "step-000003"


def test_init_from_and_export_targets_use_the_resolver(tmp_path: Path) -> None:
    """model.init_from takes best/ over checkpoints; predict takes a run's best/."""
    import pytest

    from fine_tune_cli.errors import RecipeError
    from fine_tune_cli.export.load import resolve_model_dir
    from fine_tune_cli.models.registry import resolve_init_dir

    run = _run_dir(tmp_path / "run", best=False, steps=[1, 3], complete=[1])
    assert resolve_init_dir(run) == run / CHECKPOINTS / "step-000001"
    with pytest.raises(RecipeError, match="run dir has no best/ model yet"):
        resolve_model_dir(run)
    _model(run / BEST)
    assert resolve_init_dir(run) == run / BEST
    assert resolve_model_dir(run) == run / BEST
