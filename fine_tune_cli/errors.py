"""User-facing errors and the one place that maps them to exit codes.

Every error a user can cause is one of these; anything else escaping a command is a bug
(exit 1). The CLI prints `message` as one line; tracebacks only with FTC_DEBUG=1.
"""

from __future__ import annotations


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
