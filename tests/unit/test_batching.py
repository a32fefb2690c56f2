"""Length-grouped batching (train.batching: length_grouped): every index once per epoch, a
pure function of (seed, epoch), batches of near-equal length without collapsing the class
mix, aligned with DDP sharding and accumulation; old recipe locks resume in random order."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from fine_tune_cli.data.batching import (
    MEGA_BATCHES,
    epoch_order,
    length_grouped_order,
    step_groups,
)
from fine_tune_cli.engine.distributed import Dist


def skewed_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Lengths like verses or messages: mostly short, a long tail, capped at 128."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(3.2, 0.6, n).astype(np.int64), 3, 128)


def spread(order: np.ndarray, lengths: np.ndarray, batch: int) -> float:
    """Mean (longest - shortest) length over the full batches of an order."""
    n_full = len(order) // batch
    batches = lengths[order[: n_full * batch]].reshape(n_full, batch)
    return float((batches.max(1) - batches.min(1)).mean())


def padding(order: np.ndarray, lengths: np.ndarray, batch: int) -> float:
    """Share of a padded batch's cells that are padding, over the epoch."""
    cells = real = 0
    for i in range(0, len(order), batch):
        part = lengths[order[i : i + batch]]
        cells += int(part.max()) * len(part)
        real += int(part.sum())
    return 1 - real / cells


@pytest.mark.parametrize(("n", "batch"), [(1, 4), (7, 4), (100, 10), (1001, 32), (5000, 64)])
def test_every_index_exactly_once_and_the_short_batch_last(n: int, batch: int):
    lengths = skewed_lengths(n)
    order = length_grouped_order(lengths, seed=3, epoch=1, batch_size=batch)
    assert sorted(order.tolist()) == list(range(n))
    tail = n % batch
    if tail and n > batch:
        # The one short batch is the last one: every other batch stays batch-aligned.
        assert len(step_groups(order, batch, 1)[-1][0]) == tail


def test_a_pure_function_of_seed_and_epoch():
    lengths = skewed_lengths(3000)
    a = length_grouped_order(lengths, seed=7, epoch=2, batch_size=32)
    assert np.array_equal(a, length_grouped_order(lengths, seed=7, epoch=2, batch_size=32))
    assert not np.array_equal(a, length_grouped_order(lengths, seed=7, epoch=3, batch_size=32))
    assert not np.array_equal(a, length_grouped_order(lengths, seed=8, epoch=2, batch_size=32))


def test_batch_length_spread_far_below_random_batching():
    lengths, batch = skewed_lengths(20_000), 32
    grouped = length_grouped_order(lengths, seed=0, epoch=0, batch_size=batch)
    shuffled = epoch_order(len(lengths), seed=0, epoch=0)
    assert spread(grouped, lengths, batch) < 0.15 * spread(shuffled, lengths, batch)
    assert padding(grouped, lengths, batch) < 0.25 * padding(shuffled, lengths, batch)


def test_batches_come_in_random_length_order():
    """Not all long batches first (or last): the batches are shuffled after grouping."""
    lengths, batch = skewed_lengths(20_000), 32
    order = length_grouped_order(lengths, seed=0, epoch=0, batch_size=batch)
    n_full = len(order) // batch
    means = lengths[order[: n_full * batch]].reshape(n_full, batch).mean(1)
    rank_corr = np.corrcoef(np.arange(n_full), np.argsort(np.argsort(means)))[0, 1]
    assert abs(rank_corr) < 0.1


def test_class_mix_per_batch_is_not_degenerate():
    """Labels that correlate with length (one class ~1.5x longer, as long verses and
    short ones in the KJV) still mix within batches: grouping sorts only inside
    mega-batches of MEGA_BATCHES batches, so few batches end up single-class."""
    rng = np.random.default_rng(1)
    n, batch = 20_000, 32
    labels = rng.integers(0, 2, n)
    lengths = np.clip(rng.normal(np.where(labels == 1, 36, 24), 12), 3, 128).astype(np.int64)
    order = length_grouped_order(lengths, seed=0, epoch=0, batch_size=batch)
    n_full = len(order) // batch
    share = labels[order[: n_full * batch]].reshape(n_full, batch).mean(1)
    single_class = np.mean((share == 0) | (share == 1))
    assert single_class < 0.05
    assert 0.2 < float(np.median(share)) < 0.8  # the middle batches hold both classes
    assert MEGA_BATCHES * batch < n  # more than one mega-batch: the test means something


@pytest.mark.parametrize(("world", "accum"), [(2, 1), (2, 3), (4, 2)])
def test_ddp_ranks_split_each_global_batch(world: int, accum: int, monkeypatch: pytest.MonkeyPatch):
    """Grouped per global batch (batch x world): rank r's k-th micro-batch and every
    other rank's k-th are one global batch, so all ranks pad to similar widths."""
    lengths, batch = skewed_lengths(4000), 16
    order = length_grouped_order(lengths, seed=0, epoch=0, batch_size=batch * world)
    per_rank = []
    for rank in range(world):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(rank))
        groups = step_groups(Dist().shard(order), batch, accum)
        per_rank.append([micro for group in groups for micro in group])
    n_full = len(order) // (batch * world)
    for k in range(n_full):
        joined = np.sort(np.concatenate([micro[k] for micro in per_rank]))
        assert np.array_equal(joined, np.sort(order[k * batch * world : (k + 1) * batch * world]))
    covered = np.unique(np.concatenate([m for micro in per_rank for m in micro]))
    assert len(covered) == len(lengths)  # every sample trained on (the tail wraps around)


def test_a_lock_without_train_batching_resumes_in_random_order(tmp_path):
    """recipe.lock.yaml v2 (before train.batching) migrates to batching: random."""
    from fine_tune_cli.recipe import dump_recipe, load_recipe
    from fine_tune_cli.runs import read_recipe_lock

    recipe = load_recipe("demo", ["train.batching=length_grouped"]).recipe
    tree = yaml.safe_load(dump_recipe(recipe))
    del tree["train"]["batching"]
    lock = tmp_path / "recipe.lock.yaml"
    lock.write_text("format_version: 2\n" + yaml.safe_dump(tree, sort_keys=False))
    assert read_recipe_lock(lock).train.batching == "random"
