"""User-facing errors and the one place that maps them to exit codes.

Every error a user can cause is one of these; anything else escaping a command is a bug
(exit 1). The CLI prints `message` as one line; tracebacks only with FTC_DEBUG=1.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class FtcError(Exception):
    """Base class: an error with a user-facing one-line message and an exit code."""

    exit_code = 1
    status = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.payload: dict[str, object] = {}  # extra --json fields (e.g. metrics of a gate)


class RecipeError(FtcError):
    """The recipe or command line is wrong (unknown key, bad value, missing named file)."""

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems:\n  " + "\n  ".join(self.problems)
        super().__init__(message)


class UsageError(RecipeError):
    """The command line itself is wrong (unknown option, missing argument)."""


class FormatError(RecipeError):
    """A file's format_version is newer than this ftc reads (or not a version at all)."""


class DataError(FtcError):
    """The data is missing, unreadable, empty or malformed."""

    exit_code = 3


class DivergedError(FtcError):
    """Training produced a non-finite loss."""

    exit_code = 4
    status = "diverged"


class GateError(FtcError):
    """A quality gate failed: --fail-under, export parity, metric drop."""

    exit_code = 5
    status = "gate_failed"


class IntegrityError(FtcError):
    """A file's sha256 does not match its manifest."""

    exit_code = 6


class ConflictError(FtcError):
    """Run dir locked, complete run present, or non-empty output directory."""

    exit_code = 7


class OutputError(FtcError):
    """Writing outputs failed (disk full, read-only)."""

    exit_code = 8


# Write failures that are the machine's, not a bug: exit 8 with the fix. Keyed by errno;
# Rust libraries (safetensors, tokenizers) only say "... (os error 28)" in their message.
_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full: free space or write the outputs elsewhere",
    errno.EDQUOT: "the disk quota is used up: free space or write the outputs elsewhere",
    errno.EFBIG: "a file hit the file-size limit (ulimit -f, or the filesystem's): raise"
    " it or write the outputs elsewhere",
    errno.EROFS: "the filesystem is read-only: write the outputs elsewhere",
    errno.EACCES: "no permission to write there: fix its permissions or write the outputs"
    " elsewhere",
    errno.EPERM: "no permission to write there: fix its permissions or write the outputs elsewhere",
}
_RUST_OS_ERROR = re.compile(r"os error (\d+)")


def _write_errno(exc: BaseException) -> tuple[int, str | None] | None:
    """(errno, filename) of a write failure in `exc` or the exceptions it wraps."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_FAILURES:
            return current.errno, current.filename
        found = _RUST_OS_ERROR.search(str(current))
        if found and int(found.group(1)) in _WRITE_FAILURES:
            return int(found.group(1)), None
        current = current.__cause__ or current.__context__
    return None


def output_failure(
    exc: BaseException, path: str | Path | None = None, *, writing: bool = False
) -> OutputError | None:
    """The OutputError (exit 8) for an exception that is a failed write (disk full, file
    too large, read-only, no permission), naming `path` (else the file the OS named);
    None when `exc` is something else. The one place that knows these errnos.
    `writing`: the caller was only writing `path`, so any other OSError is exit 8 too."""
    if isinstance(exc, OutputError):
        return exc
    found = _write_errno(exc)
    if found is None:
        if writing and isinstance(exc, OSError):
            return OutputError(f"{path or exc.filename}: cannot write ({exc.strerror or exc})")
        return None
    code, filename = found
    where = path or filename or "writing outputs"
    return OutputError(f"{where}: cannot write ({os.strerror(code)}); {_WRITE_FAILURES[code]}")


class WorkerError(FtcError):
    """A batch collation worker process failed or died (exit 1: not the user's input)."""


class DistributedError(FtcError):
    """A rank died or timed out."""

    exit_code = 9


class Interrupted(FtcError):
    """Stopped by a signal after saving a checkpoint; exit 128 + signal number."""

    status = "interrupted"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug): rerun with FTC_DEBUG=1 for the traceback",
    2: "recipe or command line is wrong",
    3: "data error",
    4: "training diverged (non-finite loss)",
    5: "a gate failed (--fail-under, export parity or metric drop)",
    6: "integrity failure (sha256 mismatch against a manifest)",
    7: "conflict (run dir locked, complete run or non-empty output present)",
    8: "I/O failure writing outputs",
    9: "distributed failure (a rank died or timed out)",
    130: "interrupted by SIGINT after saving a checkpoint",
    143: "interrupted by SIGTERM after saving a checkpoint",
}
