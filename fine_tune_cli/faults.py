"""Fault injection for tests, off unless its environment variable names a point.

`FTC_FAULT_SIGNAL_AT=<point>` sends this process SIGTERM when it reaches `<point>`
(`eval`: metrics computed, nothing written yet; `export`: artefact written and checked in
its temp dir, not yet published), so tests can show a signal at that moment publishes
nothing without racing a timer.
"""

from __future__ import annotations

import os
import signal


def signal_at(point: str) -> None:
    if os.environ.get("FTC_FAULT_SIGNAL_AT") == point:
        os.kill(os.getpid(), signal.SIGTERM)
