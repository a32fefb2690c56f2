"""scripts/bench_gpu.sh: argument handling (dry run), the CPU exit, and the recipes it
would train are valid (so a rare GPU lease is not spent on a typo)."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_gpu.sh"


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def planned(out: str) -> list[list[str]]:
    """The ftc argument lists a dry run prints."""
    marker = f"{sys.executable} -m fine_tune_cli "
    return [shlex.split(line.split(marker, 1)[1]) for line in out.splitlines() if marker in line]


def test_dry_run_prints_the_plan_with_the_given_steps():
    r = bench("--dry-run", "--steps", "7", "--bert-steps", "9", "--warmup", "2")
    assert r.returncode == 0, r.stderr
    gpt2, bert = planned(r.stdout)
    assert gpt2[:2] == ["train", "gpt2-clm-kjv"] and bert[:2] == ["train", "demo"]
    assert {"train.max_steps=7", "train.compile=true", "train.precision=bf16"} <= set(gpt2)
    assert {"train.max_steps=9", "train.batching=length_grouped"} <= set(bert)
    assert "gpu_smoke.sh" in r.stdout
    assert "gpu_smoke.sh" not in bench("--dry-run", "--no-smoke").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "abc"], "--steps needs a positive integer (got 'abc')"),
        (["--bert-steps", "0"], "--bert-steps needs a positive integer (got '0')"),
        (["--steps"], "--steps needs a positive integer (got '')"),
        (["--warmup", "60"], "--warmup (60) must be below --steps (60)"),
        (["--frobnicate"], "unknown argument '--frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_usage(args: list[str], message: str):
    r = bench("--dry-run", *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "would run" not in r.stdout


def test_help_exits_0():
    r = bench("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: scripts/bench_gpu.sh")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_without_cuda_it_says_so_and_exits_0():
    r = bench()
    assert r.returncode == 0, r.stderr
    assert "no CUDA device" in r.stdout


def test_the_planned_recipes_validate(ftc, monkeypatch):
    """Every override is a real key with a valid value, and the bundled data resolves
    from the repo root (where the script runs)."""
    monkeypatch.chdir(REPO)
    for args in planned(bench("--dry-run").stdout):
        r = ftc("recipes", "validate", *args[1:], "--json")
        assert r.code == 0, f"{args}: {r.err}{r.out}"
