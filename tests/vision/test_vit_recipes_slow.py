"""The built-in ViT recipes at full length (`make test-slow`): vit-digits reaches its
target, and vit-mim-digits -> vit-digits-from-mim chains through the recipes as shipped."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_vit_digits_reaches_its_target(ftc, isolated: Path):
    result = ftc("train", "vit-digits", "--json")
    assert result.code == 0, result.err
    result = ftc("eval", isolated / "runs/vit-digits", "--split", "test", "--json")
    assert result.code == 0, result.err
    assert result.json()["metrics"]["accuracy"] >= 0.96


def test_mim_pretraining_then_fine_tuning(ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch):
    result = ftc("train", "vit-mim-digits", "--json")
    assert result.code == 0, result.err
    first = result.json()["metrics"]["reconstruction_loss"]
    monkeypatch.setenv("FTC_RUNS_DIR", str(isolated / "runs"))
    result = ftc("train", "vit-digits-from-mim", "--json")
    assert result.code == 0, result.err
    log = (isolated / "runs/vit-digits-from-mim/train.log").read_text()
    assert "vit-mim-digits/best" in log and "newly initialised: 2 tensors" in log
    result = ftc("eval", isolated / "runs/vit-digits-from-mim", "--split", "test", "--json")
    assert result.code == 0, result.err
    assert result.json()["metrics"]["accuracy"] >= 0.95
    assert first < 0.5  # the encoder learnt to fill in hidden patches (L1, normalised pixels)
