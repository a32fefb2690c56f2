"""Exact resume with train.batching: length_grouped, through the CLI: a run stopped by
SIGTERM mid-epoch and continued with `--resume auto` ends with bitwise the same weights and
per-step log as the uninterrupted run (the grouped order is a pure function of seed and
epoch, so the data position restores exactly)."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from tests.engine.test_resume import (
    MAX_STEPS,
    checkpoint_steps,
    finish,
    log_lines,
    records,
    run_here,
    start,
    train_args,
    wait_for_step,
    weights,
)

GROUPED = "train.batching=length_grouped"


@pytest.fixture(scope="module")
def grouped_reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    base = tmp_path_factory.mktemp("grouped")
    run_dir = base / "run"
    with pytest.MonkeyPatch.context() as mp:  # what the autouse `isolated` fixture does
        mp.setenv("FTC_CACHE_DIR", str(cache_dir))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.chdir(base)
        result = run_here(*train_args(run_dir, GROUPED, "--json"))
    assert result.code == 0, result.err
    return run_dir


def test_grouping_changes_the_batches(grouped_reference: Path, tmp_path: Path):
    """The key is not ignored: the first step's loss (before any update, same init)
    differs from random batching's, i.e. the first batch differs."""
    run_dir = tmp_path / "random"
    result = run_here(*train_args(run_dir, "train.max_steps=1", "--json"))
    assert result.code == 0, result.err
    first = [r["loss"] for r in records(run_dir) if r.get("step") == 1 and "loss" in r]
    grouped = [r["loss"] for r in records(grouped_reference) if r.get("step") == 1 and "loss" in r]
    assert first and grouped and first != grouped


def test_sigterm_mid_epoch_then_resume_is_bitwise_identical(
    grouped_reference: Path, tmp_path: Path
) -> None:
    rng = random.Random()
    run_dir = tmp_path / "run"
    proc = start(run_dir, GROUPED)
    wait_for_step(proc, run_dir, rng.randint(3, 9))
    proc.send_signal(signal.SIGTERM)
    assert finish(proc).code == 143
    stopped = checkpoint_steps(run_dir)[-1]
    assert stopped < MAX_STEPS  # mid-epoch: the demo's train split is ~30 batches of 8

    result = run_here(*train_args(run_dir, GROUPED, "--resume", "auto", "--json"))
    assert result.code == 0, result.err
    for model_dir in (f"checkpoints/step-{MAX_STEPS:06d}", "best"):
        got, want = weights(run_dir, model_dir), weights(grouped_reference, model_dir)
        assert got.keys() == want.keys()
        assert all((got[k] == want[k]).all() for k in want), model_dir
    assert log_lines(run_dir) == log_lines(grouped_reference)
