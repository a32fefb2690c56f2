"""DDP on CPU (gloo): `ftc train --nproc 2` through the real CLI, in a subprocess with
OMP_NUM_THREADS=1 (two torch processes with default threads on 2 cores crawl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.conftest import DIST_BASE, run_ftc

pytestmark = pytest.mark.distributed

BASE = DIST_BASE


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "step-000006" / "model.safetensors"))


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path: Path) -> None:
    ddp = run_ftc(
        "train",
        "demo",
        *BASE,
        "train.batch_size=8",
        f"train.run_dir={tmp_path}/ddp",
        "--nproc",
        "2",
        "--json",
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    payload = json.loads(ddp.stdout)  # exactly one JSON object on stdout
    assert payload["status"] == "ok" and payload["processes"] == 2
    assert "accuracy" in payload["metrics"]
    provenance = json.loads((tmp_path / "ddp" / "provenance.json").read_text())
    assert provenance["world_size"] == 2 and provenance["status"] == "complete"

    single = run_ftc(
        "train",
        "demo",
        *BASE,
        "train.batch_size=16",
        f"train.run_dir={tmp_path}/single",
        "--json",
    )
    assert single.returncode == 0, single.stderr[-2000:]
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key

    # A different global batch is a different run: the comparison above can fail.
    other = run_ftc(
        "train",
        "demo",
        *BASE,
        "train.batch_size=8",
        f"train.run_dir={tmp_path}/other",
    )
    assert other.returncode == 0, other.stderr[-2000:]
    c = weights(tmp_path / "other")
    assert any(not torch.allclose(a[k], c[k], atol=1e-5) for k in a)


def test_a_dead_rank_is_a_distributed_failure(tmp_path: Path) -> None:
    result = run_ftc(
        "train",
        "demo",
        *BASE,
        "train.batch_size=8",
        f"train.run_dir={tmp_path}/dead",
        "train.distributed.timeout_s=60",
        "--nproc",
        "2",
        "--json",
        env={"FTC_FAULT_EXIT_RANK": "1:2"},
    )
    assert result.returncode == 9, (result.returncode, result.stdout, result.stderr[-2000:])
    payload = json.loads(result.stdout)
    assert payload["status"] == "error" and payload["exit_code"] == 9
    assert "torchrun" in payload["message"]
