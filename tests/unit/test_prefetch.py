"""Background collation yields exactly what inline collation does, in order, and stops
cleanly when the loop stops early."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fine_tune_cli.data.prefetch import Prefetcher


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
