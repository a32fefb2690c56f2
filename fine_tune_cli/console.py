"""Human output: log lines to stderr (rich on a terminal, plain lines for cron/CI logs),
a copy into the run's train.log, and progress: a bar on a terminal, periodic log lines
elsewhere (a cron mail must tell a slow run from a hung one)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("ftc")

# The one rich Console of this process while stderr is a terminal. The log handler and
# every progress bar print through it, so rich's live display moves log lines above the
# bar instead of letting them land on the bar's line.
_console: Console | None = None
# The live rich progress display: rich allows one per console, so a progress started
# while another runs (validation inside training) is a second row of the same display.
_live: Any = None
# Seconds between off-terminal progress lines for the current command: its recipe's
# log.progress_every once the command knows its recipe (set_progress_every).
_every: float | None = None


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def setup_logging(verbose: bool = False, console: Console | None = None) -> None:
    """Plain timestamped lines off a terminal; rich lines on one (or on `console`, which
    tests pass to get a fake terminal)."""
    global _console, _every
    _every = None  # until the command knows its recipe
    log.handlers.clear()
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    _console = console
    if _console is None and stderr_is_tty():
        from rich.console import Console

        _console = Console(stderr=True)
    if _console is not None:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=_console, show_path=False, markup=False, log_time_format="%X"
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)


def set_progress_every(seconds: float) -> None:
    """The interval of progress lines whose caller passes none (eval batches, predict):
    the command's recipe's `log.progress_every`, set where the command loads it."""
    global _every
    _every = seconds


def _default_every() -> float:
    if _every is not None:
        return _every
    from fine_tune_cli.recipe.schema import LogSpec  # the one home of the default

    return float(LogSpec.model_fields["progress_every"].default)


def add_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    log.addHandler(handler)
    return handler


def format_duration(seconds: float) -> str:
    """`4m12s`, `1h03m`, `9s`: short enough for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of any long loop (training steps, prepared rows, eval batches).

    `update(completed, fields=..., counts=...)` after each unit of work: `fields` are shown
    as given (`{"loss": "0.4521"}` -> `loss 0.4521`; format numbers yourself), `counts`
    are increments summed into rates (`{"samples": 32}` -> `31.2 samples/s`, averaged from
    the first update on, so start-up does not skew them). On a terminal (the console
    `setup_logging` made) a rich bar with those fields and an ETA; elsewhere a log line
    every `every` seconds (0: never), and at the first update when `first_line` (training
    does; a short eval stays quiet):
    `step 120/642 (19%) epoch 1 loss 0.4521 lr 4.1e-05 31.2 samples/s eta 4m12s`.
    `every=None`: the command's interval (`set_progress_every`). `name` prefixes the line
    and labels the bar; `total=None` means unknown (no %, no ETA). `enabled=False` shows
    nothing; the default shows on rank 0 only. A progress started inside another (eval
    batches during training) is a second bar row, removed when it closes. Use as a
    context manager or `close()`.
    """

    def __init__(
        self,
        total: int | None,
        *,
        every: float | None = None,
        unit: str = "step",
        start: int = 0,
        name: str = "",
        first_line: bool = False,
        enabled: bool | None = None,
    ) -> None:
        if enabled is None:  # torchrun's RANK: one progress per run, not one per process
            enabled = os.environ.get("RANK", "0") == "0"
        every = _default_every() if every is None else every
        self.total, self.unit, self.name, self.every = total, unit, name, every
        self.start = self.completed = start
        self.counts: dict[str, float] = {}
        self.fields: dict[str, Any] = {}
        self.started = time.monotonic()
        self._last_line: float | None = None if first_line else self.started
        # Pace is measured from the end of the first update on: the first step carries
        # start-up (compilation, caches, workers) and would skew the ETA for long.
        self._base: tuple[float, int, dict[str, float]] | None = None
        self._enabled = enabled
        self._bar: Any = None
        self._owns_bar = False
        if enabled and _console is not None:
            self._start_bar(_console, transient=bool(name))

    def _start_bar(self, console: Console, transient: bool) -> None:
        global _live
        if _live is not None:  # a row of the running display
            self._bar = _live
            self._task = _live.add_task(
                self.name or self.unit, total=self.total, completed=self.start, status=""
            )
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn() if self.total else TextColumn("{task.completed}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=transient,  # a finished eval/prepare bar leaves no trace
        )
        self._task = self._bar.add_task(
            self.name or self.unit, total=self.total, completed=self.start, status=""
        )
        self._bar.start()
        self._owns_bar = True
        _live = self._bar

    def update(
        self,
        completed: int,
        *,
        fields: Mapping[str, Any] | None = None,
        counts: Mapping[str, float] | None = None,
    ) -> None:
        self.completed = completed
        if fields is not None:
            self.fields = dict(fields)
        for key, n in (counts or {}).items():
            self.counts[key] = self.counts.get(key, 0.0) + n
        if self._base is None:
            self._base = (time.monotonic(), completed, dict(self.counts))
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, status=self._status())
            return
        now = time.monotonic()
        due = self.every > 0 and (self._last_line is None or now - self._last_line >= self.every)
        if due:
            self._last_line = now
            log.info("%s", self.line())

    def advance(
        self,
        n: int = 1,
        *,
        fields: Mapping[str, Any] | None = None,
        counts: Mapping[str, float] | None = None,
    ) -> None:
        self.update(self.completed + n, fields=fields, counts=counts)

    def _pace(self) -> tuple[float, int, dict[str, float]]:
        """(seconds, units done, counts) since the first update, once there is more than
        it; before that, since this Progress started."""
        if self._base is not None and self.completed > self._base[1]:
            since, done, counts = self._base
            return (
                max(time.monotonic() - since, 1e-9),
                self.completed - done,
                {k: n - counts.get(k, 0.0) for k, n in self.counts.items()},
            )
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return elapsed, self.completed - self.start, self.counts

    def _status(self) -> str:
        """The fields and rates (the bar shows count, elapsed and ETA itself)."""
        elapsed, _, counts = self._pace()
        parts = [f"{k} {v}" for k, v in self.fields.items()]
        parts += [f"{n / elapsed:.1f} {k}/s" for k, n in counts.items()]
        return " ".join(parts)

    def eta(self) -> float | None:
        """Seconds left at the average pace since the first update (None when unknown)."""
        elapsed, done, _ = self._pace()
        if not self.total or done <= 0:
            return None
        return elapsed / done * max(self.total - self.completed, 0)

    def line(self) -> str:
        """The off-terminal progress line."""
        head = f"{self.name}: " if self.name else ""
        if self.total:
            pct = 100 * self.completed / self.total
            head += f"{self.unit} {self.completed}/{self.total} ({pct:.0f}%)"
        else:
            head += f"{self.unit} {self.completed}"
        parts = [head, self._status()]
        eta = self.eta()
        if eta is not None:
            parts.append(f"eta {format_duration(eta)}")
        return " ".join(p for p in parts if p)

    def close(self) -> None:
        global _live
        if self._bar is None:
            return
        if self._owns_bar:
            self._bar.stop()
            _live = None
        else:
            self._bar.remove_task(self._task)
        self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
