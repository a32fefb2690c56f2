"""torch.distributed behind a small interface so the loop reads like single-device code.

Launched under `torchrun` (WORLD_SIZE > 1) this sets up the process group (NCCL on
CUDA, gloo on CPU), shards each epoch's order across ranks and wraps the model: DDP
(every rank holds the whole model) or FSDP2 (`fully_shard`: weights, gradients and
optimizer state split across ranks, each transformer block gathered only while it
runs). Without torchrun every method is a no-op and the model trains unsharded.

Under FSDP, gathering the full weights or optimizer state for a save is a collective:
every rank calls `full_model_state` / `optimizer_state`, rank 0 receives the tensors
(on CPU) and writes them, in the same layout as a DDP or single-process run, so
checkpoints resume under any strategy and `best/` stays a plain HF model dir.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Any

import numpy as np
import torch

from fine_tune_cli.engine.checkpoint import unwrap

log = logging.getLogger("ftc")


class Dist:
    def __init__(self, strategy: str = "ddp", timeout_s: int = 600):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.strategy = strategy
        self.timeout_s = timeout_s
        self.sharded = strategy == "fsdp" and self.world > 1  # FSDP: params are DTensors
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
            if self.strategy == "fsdp":
                log.info("fsdp: one process, training unsharded")
            return model
        if self.sharded:
            return shard_model(model, device, self.world)
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
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but the last
        micro-batch of a step.

        FSDP reads its flag when the backward runs, after this context has closed, so the
        flag is set here and left as is: every micro-batch sets it for its own backward.
        """
        if self.sharded:
            unwrap(model).set_requires_gradient_sync(last)
        elif self._ddp and not last:
            return model.no_sync()
        return contextlib.nullcontext()

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Clip to `max_norm` (inf: measure only); the total norm over all ranks' shards."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP: a DTensor reduced across the shards
            norm = norm.full_tensor()
        return float(norm)

    def full_model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """FSDP: the whole model's weights on rank 0's CPU ({} on other ranks); every rank
        must call it. Otherwise None: the model itself holds them."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = unwrap(model)  # names without torch.compile's prefix
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        # Gathering copies every tensor, so tied weights (GPT-2's lm_head and wte) come
        # back as two; point them at one again so save_pretrained stores them once, as it
        # does for the plain model.
        first: dict[int, str] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            if name in state:
                state[name] = state[first.setdefault(id(param), name)]
        return state

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Any:
        """`optimizer.state_dict()` of the unsharded model (FSDP: gathered on rank 0, {}
        elsewhere; every rank must call it), so any strategy can resume from it."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_optimizer_state_dict(unwrap(model), optimizer, options=options)
        if not full:
            return {}
        # Keyed by parameter name; the plain layout numbers parameters in group order.
        index: dict[str, int] = {}
        groups = []
        for group in full["param_groups"]:
            groups.append(
                {**group, "params": [index.setdefault(n, len(index)) for n in group["params"]]}
            )
        return {"state": {index[n]: s for n, s in full["state"].items()}, "param_groups": groups}

    def load_optimizer_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: Any
    ) -> None:
        """Load a plain `optimizer.state_dict()` (as `optimizer_state` writes it)."""
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        model = unwrap(model)
        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        by_name = {
            "state": {order[i]: s for i, s in state["state"].items()},
            "param_groups": [
                {**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]
            ],
        }
        set_optimizer_state_dict(
            model, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
        )

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks to shard one by one: the members of the model's
    ModuleLists (BertLayer, GPT2Block, ViTLayer), not those of lists inside a chosen block.

    A block that shares a weight with a module outside it is left to the root group, so
    the tie (GPT-2's lm_head and wte, BERT's MLM decoder and word embeddings) survives.
    """
    all_names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        all_names.setdefault(id(param), []).append(name)
    units: list[torch.nn.Module] = []
    taken: list[str] = []
    for list_name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList):
            continue
        if any(list_name.startswith(t + ".") for t in taken):
            continue  # a ModuleList inside a block already chosen
        for i, block in enumerate(module):
            prefix = f"{list_name}.{i}."
            params = list(block.parameters())
            if not params:
                continue
            shared_outside = any(
                not other.startswith(prefix) for p in params for other in all_names[id(p)]
            )
            if not shared_outside:
                units.append(block)
                taken.append(prefix[:-1])
    return units


def _fully_shard() -> Any:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6 ships FSDP2 under its composable API
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def shard_model(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """FSDP2: each block its own group (all-gathered just for its forward/backward), the
    rest (embeddings, heads, tied weights) in the root group."""
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = _fully_shard()
    mesh = init_device_mesh(device.type, (world,))
    units = shard_units(model)
    for block in units:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    log.info("fsdp: %d blocks + root sharded over %d processes", len(units), world)
    return model
