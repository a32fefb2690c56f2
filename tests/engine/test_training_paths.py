"""The training loop's other paths, end to end through the CLI on CPU: gradient
accumulation, bf16 autocast, fp16 refused off CUDA, the NaN guard (fail or skip), and
early stopping."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY

BASE = [*TINY, "train.device=cpu"]  # cpu even where a GPU is present: these are CPU paths
RUN = Path("runs/demo")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, and 2-core CI boxes are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ckpt = run_dir / "checkpoints" / f"step-{step:06d}"
    assert (ckpt / "COMPLETE").is_file(), f"no complete checkpoint {ckpt}"
    return load_file(str(ckpt / "model.safetensors"))


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name[5:]) for p in run_dir.glob("checkpoints/step-*/COMPLETE"))


def provenance(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "provenance.json").read_text())


# --------------------------------------------------------------------------- accumulation
def test_grad_accum_equals_one_bigger_batch(ftc) -> None:
    def train(name: str, batch: int, accum: int) -> Path:
        run_dir = Path("runs") / name
        result = ftc(
            "train",
            "demo",
            *BASE,
            "model.dropout=0",  # dropout draws differ between the two layouts
            # SGD: the update is linear in the gradient, so this compares gradients.
            # (Adam divides by sqrt(v) + eps: on parameters whose gradient is ~eps it
            # turns last-bit rounding differences into ~1e-6 weight differences.)
            "optim.name=sgd",
            "optim.lr=0.5",
            "optim.momentum=0.9",
            "log.every=1",
            f"train.batch_size={batch}",
            f"train.grad_accum={accum}",
            f"train.run_dir={run_dir}",
            "--json",
        )
        assert result.code == 0, result.err
        assert result.json()["steps"] == 12
        return run_dir

    accum, big, small = train("accum", 8, 2), train("big", 16, 1), train("small", 8, 1)
    a, b, c = weights(accum, 12), weights(big, 12), weights(small, 12)
    assert a.keys() == b.keys() == c.keys()
    for key in b:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), (
            f"{key}: max diff {(a[key] - b[key]).abs().max():.3g}"
        )
    # The per-step losses agree too (each step sees the same 16 samples).
    la, lb = train_losses(accum), train_losses(big)
    assert la.keys() == lb.keys() == set(range(1, 13))
    assert [la[s] for s in la] == pytest.approx([lb[s] for s in la], abs=1e-6)
    # Control: a genuinely different optimisation (8 samples a step) does not match.
    assert any(not torch.allclose(c[k], b[k], rtol=0, atol=1e-6) for k in b)
    assert max(float((c[k] - b[k]).abs().max()) for k in b) > 1e-3


def test_grad_accum_with_a_short_last_micro_batch_equals_one_bigger_batch(ftc) -> None:
    """The tiny demo's 224 train rows at 6 x 2 end the epoch on micro-batches of 6 and 2
    (12 x 1: one batch of 8). Each micro-batch's loss must be weighted by its share of the
    step (6/8, 2/8), not averaged (1/2 each); with equal micro-batches both agree, so
    only a short last one tells them apart (make mutation found that gap)."""

    def train(name: str, batch: int, accum: int) -> dict[str, torch.Tensor]:
        result = ftc(
            "train", "demo", *BASE, "model.dropout=0", "optim.name=sgd", "optim.lr=0.5",
            "train.max_steps=null", "train.epochs=1", "train.eval_every=epoch",
            f"train.batch_size={batch}", f"train.grad_accum={accum}",
            f"train.run_dir=runs/{name}", "--json",
        )  # fmt: skip
        assert result.code == 0, result.err
        assert result.json()["steps"] == 19  # ceil(224 / 12)
        return weights(Path("runs") / name, 19)

    a, b = train("accum", 6, 2), train("big", 12, 1)
    for key in b:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), (
            f"{key}: max diff {(a[key] - b[key]).abs().max():.3g}"
        )


# --------------------------------------------------------------------------- precision
def test_bf16_autocast_trains_end_to_end_on_cpu(ftc) -> None:
    short = ["train.max_steps=4", "train.eval_every=4"]
    result = ftc("train", "demo", *BASE, *short, "train.precision=bf16", "--json")
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["status"] == "ok" and payload["steps"] == 4
    assert math.isfinite(payload["metrics"]["loss"])
    assert provenance(RUN)["precision"] == "bf16"
    assert provenance(RUN)["device"] == "cpu"
    bf16 = weights(RUN, 4)
    assert all(t.dtype == torch.float32 for t in bf16.values())  # master weights stay fp32
    assert all(torch.isfinite(t).all() for t in bf16.values())
    # Autocast really ran: the same run in fp32 ends with different weights.
    fp32 = ftc("train", "demo", *BASE, *short, "train.run_dir=runs/fp32", "--json")
    assert fp32.code == 0, fp32.err
    other = weights(Path("runs/fp32"), 4)
    assert any(not torch.equal(bf16[k], other[k]) for k in bf16)


def test_fp16_on_cpu_is_refused_before_anything_is_written(ftc) -> None:
    result = ftc("train", "demo", *BASE, "train.precision=fp16", "--json")
    assert result.code == 2, result.err
    payload = result.json()
    assert payload["status"] == "error"
    assert "train.precision" in payload["message"]
    assert "fp16" in payload["message"] and "CUDA" in payload["message"]
    assert not RUN.exists()


# --------------------------------------------------------------------------- NaN guard
def test_nan_loss_exits_4_naming_the_step_and_last_good_checkpoint(
    ftc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTC_FAULT_NAN_STEP", "5")
    result = ftc("train", "demo", *BASE, "train.save_every=2", "--json")
    assert result.code == 4, result.err
    payload = result.json()
    assert payload["status"] == "diverged" and payload["exit_code"] == 4
    message = payload["message"]
    assert "step 5" in message
    assert str(RUN / "checkpoints" / "step-000004") in message
    assert "max_bad_steps" in message  # says what to do next
    assert checkpoint_steps(RUN) == [2, 4]  # nothing saved from the bad step on
    prov = provenance(RUN)
    assert prov["status"] == "diverged" and "step 5" in prov["error"]


def test_nan_before_any_checkpoint_says_none(ftc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTC_FAULT_NAN_STEP", "1")
    result = ftc("train", "demo", *BASE, "--json")
    assert result.code == 4
    assert "last good checkpoint: none" in result.json()["message"]


def test_max_bad_steps_skips_one_nan_step_and_completes(
    ftc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTC_FAULT_NAN_STEP", "5")
    result = ftc(
        "train",
        "demo",
        *BASE,
        "train.max_bad_steps=1",
        "train.save_every=1",
        "train.keep_last=100",
        "log.every=1",
        "--json",
    )
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["status"] == "ok" and payload["steps"] == 12
    losses = train_losses(RUN)
    assert math.isnan(losses[5])
    assert all(math.isfinite(v) for s, v in losses.items() if s != 5)
    # The bad step was skipped: no update between checkpoints 4 and 5; step 6 updates.
    w4, w5, w6 = weights(RUN, 4), weights(RUN, 5), weights(RUN, 6)
    assert all(torch.equal(w4[k], w5[k]) for k in w4)
    assert any(not torch.equal(w5[k], w6[k]) for k in w5)
    assert all(torch.isfinite(t).all() for t in weights(RUN, 12).values())
    assert provenance(RUN)["status"] == "complete"


# --------------------------------------------------------------------------- early stopping
def test_a_tie_is_not_a_new_best_and_keep_last_keeps_that_many(ftc) -> None:
    """At lr 1e-12 AdamW's updates are below float32 resolution: the weights, and so every
    eval, stay bitwise the same. A tie is no improvement, so best/ stays the first eval's
    (step 4); and keep_last 2 keeps exactly the newest two checkpoints (make mutation found
    both unguarded)."""
    result = ftc(
        "train", "demo", *BASE, "optim.lr=1e-12", "train.eval_every=4",
        "train.save_every=2", "train.keep_last=2", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    evals = [r for r in records(RUN) if r.get("split") == "validation"]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert len({r["eval_loss"] for r in evals}) == 1  # the premise: three equal evals
    assert result.json()["best_step"] == 4
    assert json.loads((RUN / "best" / "manifest.json").read_text())["step"] == 4
    assert checkpoint_steps(RUN) == [10, 12]


def test_early_stopping_stops_a_run_that_cannot_improve(ftc) -> None:
    result = ftc(
        "train",
        "demo",
        *BASE,
        "optim.lr=1e-9",  # the validation loss cannot move by min_delta in two steps
        "train.eval_every=2",
        "train.early_stopping.patience=1",
        "train.early_stopping.min_delta=0.001",
        "--json",
    )
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["stopped_early"] is True
    # Eval at step 2 sets the best; step 4 fails to beat it by min_delta: patience spent.
    assert payload["steps"] == 4 < 12
    assert payload["best_step"] == 2
    assert max(r["step"] for r in records(RUN)) == 4
    assert checkpoint_steps(RUN)[-1] == 4  # the stopping point is saved
    prov = provenance(RUN)
    assert prov["status"] == "complete" and prov["summary"]["stopped_early"] is True


def test_without_patience_the_same_run_goes_to_max_steps(ftc) -> None:
    result = ftc("train", "demo", *BASE, "optim.lr=1e-9", "train.eval_every=2", "train.max_steps=6")
    assert result.code == 0, result.err
    assert max(r["step"] for r in records(RUN)) == 6
