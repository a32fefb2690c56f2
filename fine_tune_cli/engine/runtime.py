"""Runtime concerns kept out of the loop: device choice, precision, seeding, RNG state."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch

from fine_tune_cli.errors import RecipeError


def pick_device(name: str) -> torch.device:
    """auto = cuda > mps > cpu; an explicit device that is absent is a recipe error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"train.device: '{name}' requested but no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RecipeError(f"train.device: '{name}' requested but MPS is not available")
    return device


class Precision:
    """autocast + GradScaler behind one small interface so the loop stays plain."""

    def __init__(self, name: str, device: torch.device, sharded: bool = False):
        self.name = name
        self.device = device
        if name == "fp16" and device.type != "cuda":
            raise RecipeError(
                f"train.precision: fp16 needs a CUDA device (this run is on {device.type});"
                " use bf16 or fp32"
            )
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RecipeError("train.precision: this GPU cannot do bf16; use fp16 or fp32")
        if device.type == "cuda":
            # TF32 matmuls: ~free speed on Ampere+, precision adequate for training.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        self.scaler = None
        if name == "fp16" and sharded:
            # FSDP: each rank sees only its shard of the gradients, so the inf/NaN check
            # must be agreed across ranks (or some would step and others skip).
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.scaler = ShardedGradScaler("cuda")
        elif name == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states, in types that torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch on the device."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    # Pinned host memory lets the copy overlap with compute (non_blocking).
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def collate_workers(recipe: Any) -> int:
    """train.workers resolved. auto: one process for per-batch augmentation (Python per
    image, which holds the GIL a collating thread needs), on Linux (where forking a torch
    process is safe) with a spare core per training process to run it; else 0, the
    prefetch thread. An explicit number is honoured wherever fork exists."""
    import multiprocessing
    import sys

    from fine_tune_cli.tasks import task_for

    wanted = recipe.train.workers
    forks = "fork" in multiprocessing.get_all_start_methods()
    if wanted == "auto":
        busy = task_for(recipe.model).augments_batches and bool(recipe.data.augment)
        cores = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return 1 if busy and sys.platform == "linux" and cores >= 2 else 0
    return int(wanted) if forks else 0  # without fork (Windows): the thread


def runtime_switches(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, recipe: Any, device: torch.device
) -> dict[str, Any]:
    """The GPU-path switches a run took, for provenance: attention kernel, optimizer
    implementation, compile, precision, and the FLOPs figures behind its MFU."""
    from fine_tune_cli.engine.checkpoint import unwrap
    from fine_tune_cli.engine.flops import model_shape, peak_flops
    from fine_tune_cli.tasks import task_for

    inner = unwrap(model)
    group = optimizer.param_groups[0]
    impl = "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"
    shape = model_shape(inner)
    return {
        "attn_implementation": getattr(inner.config, "_attn_implementation", None),
        "optimizer_impl": impl,
        "compile": recipe.train.compile,
        "compile_dynamic": recipe.train.compile and task_for(recipe.model).pads_batches,
        "precision": recipe.train.precision,
        "collate_workers": collate_workers(recipe),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "peak_flops": peak_flops(device),
        "matmul_weights": shape.matmul_weights,
        # at data.max_length for text; at the patch count (+[CLS]) for images
        "flops_per_token": shape.flops_per_token(
            None if getattr(inner.config, "image_size", None) else recipe.data.max_length
        ),
    }
