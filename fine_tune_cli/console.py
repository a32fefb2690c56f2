"""Human output: log lines to stderr (rich on a terminal, plain lines for cron/CI logs),
a copy into the run's train.log, and a progress bar only on a terminal."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("ftc")


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def setup_logging(verbose: bool = False) -> None:
    log.handlers.clear()
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    if stderr_is_tty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=Console(stderr=True), show_path=False, markup=False, log_time_format="%X"
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)


def add_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    log.addHandler(handler)
    return handler


class Progress:
    """Rich progress bar with ETA on a terminal; otherwise nothing (log lines suffice)."""

    def __init__(self, total: int, start: int = 0, description: str = "train"):
        self._bar = None
        if stderr_is_tty():
            from rich.console import Console
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
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task(description, total=total, completed=start, status="")
            self._bar.start()
        self.started = time.time()

    def update(self, step: int, status: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, status=status)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
