"""Background collation: the next step's batches are built in a thread while the model
trains on the current one (nanoGPT's "async prefetch next batch while the model does the
forward pass"), so the loop's data_wait drops to the time to take a finished batch.

The order of the groups is fixed before (a pure function of seed and epoch) and collate
draws no global randomness (masking and augmentation are seeded per batch), so what the
loop receives, and therefore exact resume, does not depend on prefetching.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np

from fine_tune_cli.errors import WorkerError

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


class Feed(Generic[B]):
    """The loop's source of collated step groups for a whole fit, built ahead either by
    `workers` forked processes (started once per fit) or, with 0 workers, by the
    Prefetcher's thread `depth` steps ahead.

    Processes exist for collation that holds the GIL (per-image Python augmentation): a
    thread cannot run it while a small model's step keeps the interpreter busy, a process
    on another core can. `build(epoch, indices)` must be a pure function of its arguments
    (augmentation and masking are seeded by them), so what the loop receives, and exact
    resume, do not depend on where it ran.
    """

    def __init__(self, build: Callable[[int, np.ndarray], B], depth: int, workers: int = 0):
        self.build = build
        self.depth = depth
        self._waited = 0.0
        self._thread: Prefetcher[B] | None = None
        self._pool = _Workers(build, workers) if workers else None

    @property
    def last_wait(self) -> float:
        """How long the last group took to arrive (the loop's data_wait starts with it)."""
        return self._thread.last_wait if self._thread is not None else self._waited

    def epoch(
        self, epoch: int, groups: list[list[np.ndarray]]
    ) -> Iterator[tuple[list[np.ndarray], list[B]]]:
        """The groups of one epoch (from the resume point on), collated, in order."""
        if self._pool is None:
            if self._thread is not None:
                self._thread.close()
            self._thread = Prefetcher(groups, lambda idx: self.build(epoch, idx), self.depth)
            return iter(self._thread)
        return self._from_workers(epoch, groups)

    def _from_workers(
        self, epoch: int, groups: list[list[np.ndarray]]
    ) -> Iterator[tuple[list[np.ndarray], list[B]]]:
        pool = self._pool
        assert pool is not None
        pool.drain()  # what the last epoch asked for and the loop did not take
        ahead = max(self.depth, 1) * pool.size
        for group in groups[:ahead]:
            pool.submit(epoch, group)
        for n, group in enumerate(groups):
            t0 = time.perf_counter()
            batches = pool.take()
            self._waited = time.perf_counter() - t0
            if n + ahead < len(groups):
                pool.submit(epoch, groups[n + ahead])
            yield group, batches

    def close(self) -> None:
        if self._thread is not None:
            self._thread.close()
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Feed[B]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _Workers:
    """`size` forked processes, each answering (epoch, group) requests on its own pipe;
    requests go round-robin and answers are taken in the same order, so they arrive in
    the order asked. A pipe and a blocking send/recv per group: a few tens of
    microseconds, where a DataLoader's queues and feeder threads cost a small model's
    collation time again."""

    def __init__(self, build: Callable[[int, np.ndarray], Any], size: int):
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.size = size
        self.sent = self.taken = 0
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        for _ in range(size):
            mine, theirs = context.Pipe()
            proc = context.Process(target=_serve, args=(theirs, build), daemon=True)
            # Forked with SIGINT/SIGTERM blocked, so one sent to the process group before
            # the worker ignores them stays pending (and is then dropped), not fatal.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                proc.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            theirs.close()  # so a dead worker reads as EOF here
            self.conns.append(mine)
            self.procs.append(proc)

    def submit(self, epoch: int, group: list[np.ndarray]) -> None:
        self.conns[self.sent % self.size].send((epoch, group))
        self.sent += 1

    def take(self) -> list[Any]:
        k = self.taken % self.size
        try:
            ok, payload = self.conns[k].recv()
        except (EOFError, OSError):
            self.procs[k].join(1)
            raise WorkerError(
                f"a batch collation worker died (exit code {self.procs[k].exitcode});"
                " rerun with train.workers=0 to collate in this process and see why"
            ) from None
        self.taken += 1
        if not ok:
            raise payload
        return [_as_tensors(batch) for batch in payload]

    def drain(self) -> None:
        while self.taken < self.sent:
            self.take()

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):  # already gone
                conn.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []


def _serve(conn: Any, build: Callable[[int, np.ndarray], Any]) -> None:
    """A worker's life: build each requested group until told to stop (None) or the
    parent is gone (EOF). SIGINT/SIGTERM are the parent's to handle: it finishes the
    step, saves a checkpoint and then ends the workers; one killed by the signal
    first would abort that."""
    import pickle

    import torch

    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    torch.set_num_threads(1)  # a forked OpenMP pool is not safe to use; one core's work
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        epoch, group = request
        try:
            answer: tuple[bool, Any] = (True, [_as_arrays(build(epoch, idx)) for idx in group])
        except Exception as exc:  # handed to the parent, which raises it
            try:
                pickle.dumps(exc)
            except Exception:
                exc = WorkerError(f"collating a batch failed: {type(exc).__name__}: {exc}")
            answer = (False, exc)
        conn.send(answer)


# Tensors cross from a worker as numpy arrays: plain pickling through the pipe is a copy
# of a few KB, where torch's own reduction moves each tensor through a shared-memory file
# (hundreds of microseconds apiece, more than collating a small batch).
def _as_arrays(batch: Any) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.numpy()
    if isinstance(batch, dict):
        return {k: _as_arrays(v) for k, v in batch.items()}
    return batch


def _as_tensors(batch: Any) -> Any:
    import torch

    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch)
    if isinstance(batch, dict):
        return {k: _as_tensors(v) for k, v in batch.items()}
    return batch
