"""Background collation (a thread, or worker processes) yields exactly what inline
collation does, in order, and stops cleanly when the loop stops early."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from fine_tune_cli.data.prefetch import Feed, Prefetcher


def groups(n: int) -> list[list[np.ndarray]]:
    return [[np.arange(i, i + 2), np.arange(i + 2, i + 4)] for i in range(0, 4 * n, 4)]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_same_batches_in_the_same_order_at_any_depth(depth: int):
    want = [([i.tolist() for i in g], [int(i.sum()) for i in g]) for g in groups(7)]
    with Prefetcher(groups(7), lambda idx: int(idx.sum()), depth) as ahead:
        got = [([i.tolist() for i in g], b) for g, b in ahead]
    assert got == want


def test_collation_runs_ahead_in_a_thread_and_hides_the_wait():
    """While the consumer 'trains' for longer than a collate takes, the next batch is
    ready when asked for: the wait is far below the collate time."""
    threads: set[str] = set()

    def slow(idx: np.ndarray) -> int:
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return int(idx.sum())

    waits = []
    with Prefetcher(groups(5), slow, 1) as ahead:
        for _ in ahead:
            waits.append(ahead.last_wait)
            time.sleep(0.25)  # the training step
    assert all(name.startswith("ftc-prefetch") for name in threads)
    assert max(waits[1:]) < 0.05  # two 0.05 s collates per group, all done in advance


def test_stopping_early_cancels_what_was_queued():
    built: list[int] = []
    with Prefetcher(groups(50), lambda idx: built.append(int(idx[0])) or 0, 2) as ahead:
        for n, _ in enumerate(ahead):
            if n == 1:
                break
    assert len(built) <= 2 * 5  # at most the 2 + depth groups submitted so far, not 50


# --------------------------------------------------------------------------- Feed
def build(epoch: int, idx: np.ndarray) -> dict:
    """A batch as tasks return them: tensors, a pure function of (epoch, indices)."""
    import torch

    return {"x": torch.from_numpy(idx * 10 + epoch), "pid": torch.tensor(os.getpid())}


@pytest.mark.parametrize(("workers", "depth"), [(1, 1), (2, 3)])
def test_worker_processes_feed_what_the_thread_feeds_across_epochs(workers: int, depth: int):
    """Same batches in the same order, from other processes; an epoch the loop left early
    (its last requests still out) does not leak into the next one."""

    def epochs(feed: Feed) -> list:
        seen = []
        for epoch, stop_at in [(0, 3), (1, None), (2, 0)]:
            for n, (group, batches) in enumerate(feed.epoch(epoch, groups(6))):
                seen.append(([g.tolist() for g in group], [b["x"].tolist() for b in batches]))
                pids = {int(b["pid"]) for b in batches}
                if n == stop_at:
                    break
        return seen, pids

    with Feed(build, 1, 0) as thread:
        want, here = epochs(thread)
    with Feed(build, depth, workers) as procs:
        got, there = epochs(procs)
    assert got == want
    assert here == {os.getpid()} and os.getpid() not in there
    assert len(want) == 4 + 6 + 1


def failing(epoch: int, idx: np.ndarray) -> dict:
    if int(idx[0]) >= 8:
        raise ValueError(f"no batch for {idx.tolist()}")
    return build(epoch, idx)


def test_a_collation_error_in_a_worker_is_raised_in_the_loop():
    with Feed(failing, 2, 1) as feed, pytest.raises(ValueError, match=r"no batch for \[8, 9\]"):
        for _ in feed.epoch(0, groups(4)):
            pass


def dying(epoch: int, idx: np.ndarray) -> dict:
    if int(idx[0]) >= 8:
        os._exit(3)
    return build(epoch, idx)


def test_a_worker_that_dies_is_reported_not_waited_for():
    from fine_tune_cli.errors import WorkerError

    with Feed(dying, 1, 1) as feed, pytest.raises(WorkerError, match="exit code 3"):
        for _ in feed.epoch(0, groups(4)):
            pass


def test_workers_leave_sigterm_to_the_loop_and_end_with_it():
    """A SIGTERM to the whole process group (a batch system stopping the job) must not
    kill the workers before the loop has saved its checkpoint; closing ends them."""
    import signal

    with Feed(build, 1, 2) as feed:
        procs = list(feed._pool.procs)
        for proc in procs:  # at once: the workers may not have started running yet
            os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.2)
        assert all(proc.is_alive() for proc in procs)
        assert len(list(feed.epoch(0, groups(6)))) == 6
    assert not any(proc.is_alive() for proc in procs)


@pytest.mark.parametrize(
    ("recipe", "overrides", "cores", "ranks", "platform", "want"),
    [
        ("vit-digits", [], 2, "1", "linux", 1),  # per-batch augmentation: a process
        ("vit-digits", ["data.augment=[]"], 2, "1", "linux", 0),  # nothing per image
        ("demo", [], 16, "1", "linux", 0),  # text collation is cheap: the thread
        ("vit-digits", [], 2, "2", "linux", 0),  # two ranks on two cores: no spare core
        ("vit-digits", [], 8, "1", "darwin", 0),  # fork of a torch process unsafe there
        ("demo", ["train.workers=3"], 2, "1", "linux", 3),  # asked for: honoured
    ],
)
def test_train_workers_auto_resolves_by_task_cores_and_platform(
    monkeypatch, recipe, overrides, cores, ranks, platform, want
):
    import sys

    from fine_tune_cli.engine.runtime import collate_workers
    from fine_tune_cli.recipe import load_recipe

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    monkeypatch.setattr(sys, "platform", platform)
    assert collate_workers(load_recipe(recipe, overrides).recipe) == want
