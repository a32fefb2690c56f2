"""CUDA paths: fp16 with a GradScaler, bf16, TF32, torch.compile and pinned-memory
transfers. Marked `gpu` (deselected by default) and skipped without a CUDA device; run
them with scripts/gpu_smoke.sh."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import TINY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SHORT = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every"))]
BASE = [*SHORT, "train.device=cuda", "train.eval_every=3"]
RUN = Path("runs/demo")


def provenance(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "provenance.json").read_text())


def final_checkpoint(run_dir: Path) -> Path:
    found = sorted(p.parent for p in run_dir.glob("checkpoints/step-*/COMPLETE"))
    assert found, f"no complete checkpoint in {run_dir}"
    return found[-1]


def train_ok(ftc, *extra: str, steps: int = 6) -> dict[str, Any]:
    result = ftc("train", "demo", *BASE, f"train.max_steps={steps}", *extra, "--json")
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["status"] == "ok" and payload["steps"] == steps
    assert math.isfinite(payload["metrics"]["loss"])
    assert provenance(RUN)["device"].startswith("cuda")
    return payload


@pytest.fixture
def tf32_off():
    """Start with TF32 off so a test can see who turns it on; restore afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --------------------------------------------------------------------------- precision
def test_precision_on_cuda_enables_tf32(tf32_off) -> None:
    from fine_tune_cli.engine.runtime import Precision

    Precision("fp32", torch.device("cuda"))
    assert torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32


def test_fp16_step_goes_through_the_grad_scaler(tf32_off) -> None:
    from fine_tune_cli.engine.runtime import Precision

    device = torch.device("cuda")
    precision = Precision("fp16", device)
    assert precision.scaler is not None and precision.dtype is torch.float16
    model = torch.nn.Linear(8, 2).to(device)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 8, device=device)
    with precision.autocast():
        out = model(x)
        assert out.dtype is torch.float16  # the matmul ran in half precision
        # Small, so that 2**16 times its gradient stays finite in fp16 (no skipped step).
        loss = out.float().mean() * 1e-3
    precision.backward(loss)
    # The gradient is scaled until unscale_: its norm is `scale` times the true one.
    scale = precision.scaler.get_scale()
    assert scale > 1
    scaled = model.weight.grad.norm().item()
    precision.unscale(optimizer)
    assert scaled == pytest.approx(model.weight.grad.norm().item() * scale, rel=1e-3)
    precision.step(optimizer)
    assert not torch.equal(before, model.weight.detach())
    state = precision.state_dict()
    assert state["scale"] == precision.scaler.get_scale()


def test_fp16_trains_end_to_end_and_checkpoints_the_scaler(ftc) -> None:
    train_ok(ftc, "train.precision=fp16")
    state = torch.load(final_checkpoint(RUN) / "trainer_state.pt", weights_only=True)
    assert state["scaler"] and state["scaler"]["scale"] > 0


def test_bf16_trains_end_to_end_on_cuda(ftc) -> None:
    train_ok(ftc, "train.precision=bf16")
    assert provenance(RUN)["precision"] == "bf16"


def test_fp16_run_resumes_on_cuda_with_its_scaler_state(
    ftc, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["train", "demo", *BASE, "train.max_steps=6", "train.precision=fp16"]
    monkeypatch.setenv("FTC_FAULT_NAN_STEP", "5")  # stop after checkpoint 4
    stopped = ftc(*args, "train.save_every=2", "--json")
    assert stopped.code == 4, stopped.err
    monkeypatch.delenv("FTC_FAULT_NAN_STEP")
    resumed = ftc(*args, "train.save_every=2", "--resume", "auto", "--json")
    assert resumed.code == 0, resumed.err
    assert resumed.json()["steps"] == 6
    assert provenance(RUN)["resumed_from"].endswith("step-000004")


# --------------------------------------------------------------------------- compile
def test_compiled_model_trains_and_saves_unwrapped_weights(ftc) -> None:
    from safetensors.torch import load_file

    train_ok(ftc, "train.compile=true", "train.precision=bf16", steps=3)
    keys = load_file(str(final_checkpoint(RUN) / "model.safetensors")).keys()
    assert keys and not any("_orig_mod" in k for k in keys)
    best = load_file(str(RUN / "best" / "model.safetensors")).keys()
    assert not any("_orig_mod" in k for k in best)


# --------------------------------------------------------------------------- transfer
def test_to_device_copies_through_pinned_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from fine_tune_cli.engine.runtime import to_device

    pinned: list[bool] = []
    original = torch.Tensor.pin_memory

    def spy(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(self, *args, **kwargs)
        pinned.append(out.is_pinned())
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    batch = {
        "input_ids": torch.randint(0, 100, (4, 16)),
        "attention_mask": torch.ones(4, 16, dtype=torch.int64),
        "labels": torch.tensor([0, 1, 1, 0]),
    }
    moved = to_device(batch, torch.device("cuda"))
    torch.cuda.synchronize()  # the copies were non_blocking
    assert pinned == [True, True, True]
    for key, value in batch.items():
        assert moved[key].device.type == "cuda"
        assert torch.equal(moved[key].cpu(), value)
    # Off CUDA nothing is pinned.
    pinned.clear()
    on_cpu = to_device(batch, torch.device("cpu"))
    assert pinned == [] and all(torch.equal(on_cpu[k], batch[k]) for k in batch)
