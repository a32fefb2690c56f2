"""Exact resume: a run that is killed (SIGKILL, SIGTERM, SIGINT, or a crash halfway
through writing a checkpoint) and continued with `--resume auto` ends with bitwise the
same weights and the same per-step log as one that was never interrupted (on CPU).

The runs that get killed are real `python -m fine_tune_cli` processes with
OMP_NUM_THREADS=1. The uninterrupted reference (once per module) and the final resumes run
in this process on one thread, which is bitwise the same arithmetic and saves the start-up
of a process each.
"""

from __future__ import annotations

import io
import json
import random
import re
import signal
import subprocess
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY, Result, ftc_subprocess

MAX_STEPS = 16
SAVE_EVERY = 2
OVERRIDDEN = ("train.max_steps", "train.batch_size")
ARGS = [
    *(o for o in TINY if not o.startswith(OVERRIDDEN)),
    f"train.max_steps={MAX_STEPS}",
    "train.batch_size=8",
    "train.device=cpu",
    "log.every=1",
    f"train.save_every={SAVE_EVERY}",
    "train.keep_last=100",  # keep early checkpoints so a resume can pick any of them
]
TIMING = {"samples_per_s", "tokens_per_s", "step_time", "data_wait"}  # wall-clock: differ
EVAL_STEPS = [6, 12, 16]  # eval_every=6 plus the final step


# --------------------------------------------------------------------------- helpers
def start(run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return ftc_subprocess(*train_args(run_dir, *extra), env=env)


def run_here(*args: str) -> Result:
    """`ftc ARGS` in this process, on one thread like the subprocesses."""
    from fine_tune_cli.cli.app import main

    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    torch.set_num_threads(1)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        torch.set_num_threads(threads)
    return Result(code, out.getvalue(), err.getvalue())


def train_args(run_dir: Path, *extra: str) -> list[str]:
    return ["train", "demo", *ARGS, f"train.run_dir={run_dir}", *extra]


def finish(proc: subprocess.Popen, timeout: float = 300) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return out


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> int:
    """Poll metrics.jsonl until the run has logged `step`; return the newest logged step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            result = finish(proc)
            pytest.fail(f"run ended (exit {result.code}) before step {step}:\n{result.err}")
        logged = [r["step"] for r in records(run_dir) if "loss" in r]
        if logged and max(logged) >= step:
            return max(logged)
        time.sleep(0.003)
    proc.kill()
    pytest.fail(f"run did not reach step {step} within {timeout}s")


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name[5:]) for p in run_dir.glob("checkpoints/step-*/COMPLETE"))


def weights(
    run_dir: Path, model_dir: str = f"checkpoints/step-{MAX_STEPS:06d}"
) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = run_dir / model_dir / "model.safetensors"
    assert path.is_file(), f"no {model_dir} in {run_dir}"
    return load_file(str(path))


def log_lines(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock fields: losses, lr, grad norms, eval metrics."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records(run_dir)]


def provenance(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "provenance.json").read_text())


def assert_same_as_reference(run_dir: Path, reference: Path) -> None:
    assert (run_dir / "checkpoints" / f"step-{MAX_STEPS:06d}" / "COMPLETE").is_file()
    for model_dir in (f"checkpoints/step-{MAX_STEPS:06d}", "best"):
        got, want = weights(run_dir, model_dir), weights(reference, model_dir)
        assert got.keys() == want.keys()
        differing = [k for k in want if not torch.equal(got[k], want[k])]
        assert not differing, f"{model_dir} differs from the uninterrupted run: {differing[:5]}"
    got_log, want_log = log_lines(run_dir), log_lines(reference)
    # Every step logged exactly once, in order, and evals where they belong.
    assert [r["step"] for r in got_log if "loss" in r] == list(range(1, MAX_STEPS + 1))
    assert [r["step"] for r in got_log if r.get("split") == "validation"] == EVAL_STEPS
    for a, b in zip(got_log, want_log, strict=True):
        assert a == b, f"log differs at step {b['step']}: {a} != {b}"
    assert provenance(run_dir)["status"] == "complete"


def resume_to_end(run_dir: Path, reference: Path) -> Result:
    result = run_here(*train_args(run_dir, "--resume", "auto", "--json"))
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["status"] == "ok" and payload["steps"] == MAX_STEPS
    assert_same_as_reference(run_dir, reference)
    return result


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """One uninterrupted run: the ground truth for every resume below."""
    base = tmp_path_factory.mktemp("reference")
    run_dir = base / "run"
    with pytest.MonkeyPatch.context() as mp:  # what the autouse `isolated` fixture does
        mp.setenv("FTC_CACHE_DIR", str(cache_dir))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        mp.chdir(base)
        result = run_here(*train_args(run_dir, "--json"))
    assert result.code == 0, result.err
    assert checkpoint_steps(run_dir) == list(range(SAVE_EVERY, MAX_STEPS + 1, SAVE_EVERY))
    return run_dir


@pytest.fixture
def rng() -> random.Random:
    seed = random.randrange(2**32)
    print(f"kill points drawn with random.Random({seed})")  # shown when a test fails
    return random.Random(seed)


# --------------------------------------------------------------------------- tests
def test_sigkill_twice_then_resume_is_bitwise_identical(
    reference: Path, tmp_path: Path, rng: random.Random
) -> None:
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for_step(proc, run_dir, rng.randint(2, 6))
    proc.kill()
    assert finish(proc).code == -signal.SIGKILL
    first = checkpoint_steps(run_dir)
    assert first and first[-1] < MAX_STEPS, "the kill came too late to interrupt anything"
    assert provenance(run_dir)["status"] == "running"  # nobody got to record an ending

    # Second life: resume, and kill again a few steps past where the first one died.
    killed_at = max(r["step"] for r in records(run_dir) if "loss" in r)
    proc = start(run_dir, "--resume", "auto")
    wait_for_step(proc, run_dir, min(killed_at + rng.randint(1, 4), MAX_STEPS - 4))
    proc.kill()
    assert finish(proc).code == -signal.SIGKILL
    second = checkpoint_steps(run_dir)
    assert second[-1] < MAX_STEPS

    resume_to_end(run_dir, reference)
    resumed_from = provenance(run_dir)["resumed_from"]
    assert resumed_from and resumed_from.endswith(f"step-{second[-1]:06d}")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_then_resume_is_identical(
    reference: Path, tmp_path: Path, rng: random.Random, sig: signal.Signals, code: int
) -> None:
    run_dir = tmp_path / "run"
    proc = start(run_dir, "--json")
    seen = wait_for_step(proc, run_dir, rng.randint(3, 9))
    proc.send_signal(sig)
    result = finish(proc)
    assert result.code == code, result.err
    payload = result.json()
    assert payload["status"] == "interrupted" and payload["exit_code"] == code
    match = re.search(r"interrupted at step (\d+); checkpoint saved: (\S+)", payload["message"])
    assert match, payload["message"]
    stopped = int(match.group(1))
    assert seen <= stopped < MAX_STEPS
    # The step it stopped at has a complete checkpoint, the newest, and the log ends there.
    assert checkpoint_steps(run_dir)[-1] == stopped
    assert match.group(2).endswith(f"step-{stopped:06d}")
    assert max(r["step"] for r in records(run_dir)) == stopped
    assert provenance(run_dir)["status"] == "interrupted"

    resume_to_end(run_dir, reference)
    assert provenance(run_dir)["resumed_from"].endswith(f"step-{stopped:06d}")


def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(
    reference: Path, tmp_path: Path, rng: random.Random
) -> None:
    run_dir = tmp_path / "run"
    crash = rng.choice([4, 6, 8, 10])
    result = finish(start(run_dir, env={"FTC_FAULT_KILL_IN_SAVE": str(crash)}))
    assert result.code == 137, result.err
    # The half-written checkpoint holds weights but no trainer state and no COMPLETE.
    half = [p for p in (run_dir / "checkpoints").iterdir() if f"step-{crash:06d}" in p.name]
    assert half, f"no trace of the checkpoint being written at step {crash}"
    for path in half:
        assert (path / "model.safetensors").is_file()
        assert not (path / "COMPLETE").exists()
        assert not (path / "trainer_state.pt").exists()
    assert checkpoint_steps(run_dir)[-1] == crash - SAVE_EVERY

    resume_to_end(run_dir, reference)
    assert provenance(run_dir)["resumed_from"].endswith(f"step-{crash - SAVE_EVERY:06d}")
    # Nothing half-written is left behind once the run has saved again.
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers
    assert checkpoint_steps(run_dir) == list(range(SAVE_EVERY, MAX_STEPS + 1, SAVE_EVERY))


def test_resume_refuses_a_changed_recipe_and_accepts_cadence_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = [*TINY, "train.device=cpu", "train.save_every=4"]
    monkeypatch.setenv("FTC_FAULT_NAN_STEP", "7")  # a run that stops after checkpoint 4
    assert run_here("train", "demo", *base, "--json").code == 4
    monkeypatch.delenv("FTC_FAULT_NAN_STEP")
    run_dir = Path("runs/demo")
    before = checkpoint_steps(run_dir)
    assert before == [4]

    changed = run_here("train", "demo", *base, "optim.lr=0.1", "--resume", "auto", "--json")
    assert changed.code == 2, changed.err
    message = changed.json()["message"]
    assert "optim.lr" in message and "0.1" in message
    assert "log.every" not in message
    batch = run_here("train", "demo", *base, "train.batch_size=8", "--resume", "auto", "--json")
    assert batch.code == 2
    assert "global batch (16 -> 8)" in batch.json()["message"]
    assert checkpoint_steps(run_dir) == before  # refused before training anything

    ok = run_here(
        "train",
        "demo",
        *base,
        "log.every=5",
        "train.eval_every=8",
        "--resume",
        "auto",
        "--json",
    )
    assert ok.code == 0, ok.err
    assert ok.json()["steps"] == 12
    lines = records(run_dir)
    # The new cadence applies from the checkpoint on: evals at 8 and the final 12.
    assert [r["step"] for r in lines if r.get("split") == "validation"] == [8, 12]
    assert [r["step"] for r in lines if "loss" in r] == [1, 5, 10]
    assert "every: 5" in (run_dir / "recipe.lock.yaml").read_text()
