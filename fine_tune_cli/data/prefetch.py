"""Background collation: the next step's batches are built in a thread while the model
trains on the current one (nanoGPT's "async prefetch next batch while the model does the
forward pass"), so the loop's data_wait drops to the time to take a finished batch.

The order of the groups is fixed before (a pure function of seed and epoch) and collate
draws no global randomness (masking and augmentation are seeded per batch), so what the
loop receives, and therefore exact resume, does not depend on prefetching.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import numpy as np

B = TypeVar("B")


class Prefetcher(Generic[B]):
    """Yields (group, collated micro-batches) for each step group, `depth` groups ahead
    (0: collate inline). `last_wait` is the time the last item took to arrive."""

    def __init__(
        self, groups: list[list[np.ndarray]], collate: Callable[[np.ndarray], B], depth: int
    ):
        self.groups = groups
        self.collate = collate
        self.depth = depth
        self.last_wait = 0.0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ftc-prefetch") if depth else None

    def _build(self, group: list[np.ndarray]) -> list[B]:
        return [self.collate(idx) for idx in group]

    def __iter__(self) -> Iterator[tuple[list[np.ndarray], list[B]]]:
        if self._pool is None:
            for group in self.groups:
                t0 = time.perf_counter()
                built = self._build(group)
                self.last_wait = time.perf_counter() - t0
                yield group, built
            return
        pending: deque[tuple[list[np.ndarray], Future[list[B]]]] = deque()
        upcoming = iter(self.groups)
        for group in upcoming:
            pending.append((group, self._pool.submit(self._build, group)))
            if len(pending) > self.depth:
                break
        while pending:
            group, future = pending.popleft()
            t0 = time.perf_counter()
            built = future.result()
            self.last_wait = time.perf_counter() - t0
            following = next(upcoming, None)
            if following is not None:  # queue the next before handing this one over
                pending.append((following, self._pool.submit(self._build, following)))
            yield group, built

    def close(self) -> None:
        """Drop what was built ahead (the loop stopped early) and end the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher[B]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
