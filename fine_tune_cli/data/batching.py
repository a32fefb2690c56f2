"""Batching: a seeded per-epoch order (so the data position can be restored exactly) and
dynamic padding (pad to the longest sequence of each batch, not to max_length)."""

from __future__ import annotations

import numpy as np
import torch

from fine_tune_cli.data.store import PreparedSplit


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).numpy()


def step_groups(order: np.ndarray, batch_size: int, accum: int) -> list[list[np.ndarray]]:
    """Split an epoch order into optimizer steps of `accum` micro-batches each."""
    micro = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [micro[i : i + accum] for i in range(0, len(micro), accum)]


def pad_batch(split: PreparedSplit, indices: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    rows = [split.example(int(i)) for i in indices]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, row in enumerate(rows):
        ids[j, : len(row)] = row
        mask[j, : len(row)] = 1
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if split.labels is not None:
        batch["labels"] = torch.from_numpy(np.asarray(split.labels[indices], dtype=np.int64))
    return batch


def eval_batches(split: PreparedSplit, batch_size: int) -> list[np.ndarray]:
    """Length-sorted batches for evaluation: far less padding, same results."""
    order = np.argsort(split.lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
