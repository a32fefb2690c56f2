"""Batching: a seeded per-epoch order (so the data position can be restored exactly) and
dynamic padding (pad to the longest sequence of each batch, not to max_length)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fine_tune_cli.data.store import PreparedSplit

if TYPE_CHECKING:
    import torch


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a pure function of (seed, epoch)."""
    import torch

    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).numpy()


# Batches per mega-batch of length grouping: long enough that sorting finds batches of
# near-equal length, short enough that the order stays close to random (class mix, and
# no epoch that runs all long batches first).
MEGA_BATCHES = 64


def length_grouped_order(
    lengths: np.ndarray, seed: int, epoch: int, batch_size: int, mega: int = MEGA_BATCHES
) -> np.ndarray:
    """An epoch order whose consecutive runs of `batch_size` samples have near-equal
    lengths, so dynamic padding pads little: shuffle, sort by length within mega-batches
    of `mega` batches, cut into batches, shuffle the batches. A pure function of
    (seed, epoch) (exact resume); every index exactly once. The one short batch (n not a
    multiple of batch_size) stays last, so every other batch stays aligned for
    `step_groups` and for `Dist.shard` (pass batch_size x world: each rank's stride takes
    batch_size samples of one global batch)."""
    import torch

    order = epoch_order(len(lengths), seed, epoch)
    chunk = mega * batch_size
    grouped = np.concatenate(
        [
            part[np.argsort(-lengths[part], kind="stable")]
            for part in (order[i : i + chunk] for i in range(0, len(order), chunk))
        ]
        or [order]
    )
    n_full = len(grouped) // batch_size
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch + 50_021)
    batches = grouped[: n_full * batch_size].reshape(n_full, batch_size)
    shuffled = batches[torch.randperm(n_full, generator=gen).numpy()].reshape(-1)
    return np.concatenate([shuffled, grouped[n_full * batch_size :]])


def train_order(
    split: PreparedSplit, padded: bool, batching: str, seed: int, epoch: int, global_batch: int
) -> np.ndarray:
    """The epoch order for `train.batching`. Only padded batches gain from grouping;
    packed LM blocks and images (padded False) always take the random order."""
    if batching == "length_grouped" and padded:
        return length_grouped_order(split.lengths, seed, epoch, global_batch)
    return epoch_order(len(split), seed, epoch)


def step_groups(order: np.ndarray, batch_size: int, accum: int) -> list[list[np.ndarray]]:
    """Split an epoch order into optimizer steps of `accum` micro-batches each."""
    micro = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [micro[i : i + accum] for i in range(0, len(micro), accum)]


def pad_batch(split: PreparedSplit, indices: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    import torch

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
