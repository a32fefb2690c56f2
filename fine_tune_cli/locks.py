"""Kernel file locks (`fcntl.flock`) for run dirs and prepared-cache entries.

Why kernel locks: the kernel drops a lock the moment its holder dies (SIGKILL, OOM,
power loss of a process), so there is no "stale lock" to detect or delete, and no race
between two processes that both decide a pid file is stale.

- `run_lock(dir)`: non-blocking. A second taker gets `ConflictError` (exit 7) naming the
  holder's pid, host and command, read from the lock file (the holder writes them there
  once it holds the lock).
- `entry_lock(path)`: blocking. A second process that needs the same prepared-cache entry
  waits for the builder, then finds the entry complete and reuses it.

The lock file is removed on release. Because a waiter may still hold an open descriptor
on the removed file, `_take` re-checks after locking that the path still names the file it
locked, and retries otherwise; two processes can never both believe they hold a lock.

POSIX only (Linux, macOS): Windows is not a target. On NFS, Linux emulates `flock` with
byte-range locks, so locks work across clients where the server supports locking.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from fine_tune_cli.errors import ConflictError, OutputError

log = logging.getLogger("ftc")

# A non-blocking taker retries this long before calling the lock held, so a brief probe
# (`ftc runs list` asking whether a run is alive) never turns into a spurious conflict.
_GRACE_S = 0.5


def _holder_info() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(["ftc", *sys.argv[1:]]) if sys.argv else "ftc",
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def read_holder(path: Path) -> dict[str, Any]:
    """What the lock file says about its holder ({} when unreadable or being written)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(path: Path) -> str:
    owner = read_holder(path)
    if not owner.get("pid"):
        return "another process"
    text = f"pid {owner['pid']} on {owner.get('host', '?')}"
    if owner.get("command"):
        text += f" ({owner['command']})"
    return text


class FileLock:
    """An exclusive `flock` on `path` (created if missing, removed on release)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _take(self, blocking: bool) -> bool:
        """One attempt; True when this object now holds the lock on the file at `path`."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(
                    f"{self.path}: cannot create the lock file ({exc.strerror})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)  # the holder removed the file as we waited on it: lock the new one

    def acquire(self, blocking: bool = True, grace_s: float = _GRACE_S) -> bool:
        """Take the lock and write our pid/host/command into it. Non-blocking: False when
        another process still holds it after `grace_s`."""
        if self._fd is not None:
            return True
        deadline = time.monotonic() + grace_s
        while not self._take(blocking):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, json.dumps(_holder_info()).encode(), 0)
        except OSError:
            pass  # a full disk: the lock still holds; a rival just cannot name us
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlinked while locked, so nobody is mid-write in it; a vanished or read-only
        # directory just leaves the file (closing still frees the lock).
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(path: Path) -> bool:
    """True while some live process holds the lock at `path` (a shared probe; it never
    creates the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def run_lock(run_dir: Path, name: str = ".lock") -> FileLock:
    """Take the run dir's lock without waiting; exit 7 naming the holder when taken."""
    lock = FileLock(Path(run_dir) / name)
    if not lock.acquire(blocking=False):
        raise ConflictError(
            f"{run_dir}: run dir is in use by {describe_holder(lock.path)};"
            " wait for it to finish or stop it (its lock is freed the moment it exits)"
        )
    return lock


def entry_lock(entry: Path) -> FileLock:
    """Take the lock of a prepared-cache entry (`<parent>/.<name>.lock`), waiting for a
    process that is building the same entry; the caller then re-checks for it."""
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(entry.parent / f".{entry.name}.lock")
    if not lock.acquire(blocking=False, grace_s=0):
        log.info("waiting for %s, which is preparing %s", describe_holder(lock.path), entry)
        lock.acquire(blocking=True)
    return lock
