"""torch.distributed behind a small interface so the loop reads like single-device code.

Launched under `torchrun` (WORLD_SIZE > 1) this sets up the process group (NCCL on
CUDA, gloo on CPU), shards each epoch's order across ranks and wraps the model in DDP;
without torchrun every method is a no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any

import numpy as np
import torch


class Dist:
    def __init__(self, strategy: str = "ddp", timeout_s: int = 600):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.strategy = strategy
        self.timeout_s = timeout_s
        self._ddp = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if self.world == 1:
            return
        import torch.distributed as td

        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        td.init_process_group(backend, timeout=datetime.timedelta(seconds=self.timeout_s))

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        self._ddp = True
        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def shard(self, order: np.ndarray) -> np.ndarray:
        """This rank's part of the epoch order; padded by wrap-around so ranks stay equal."""
        if self.world == 1:
            return order
        per_rank = -(-len(order) // self.world)
        padded = np.concatenate([order, order[: per_rank * self.world - len(order)]])
        return padded[self.rank :: self.world]

    def sum(self, value: float | int) -> float:
        if self.world == 1:
            return value
        import torch.distributed as td

        t = torch.tensor([float(value)], dtype=torch.float64)
        td.all_reduce(t)
        return float(t.item())

    def no_sync(self, model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if self._ddp and not last:
            return model.no_sync()
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()
