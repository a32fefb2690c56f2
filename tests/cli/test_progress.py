"""Progress where the user looks: periodic plain lines when stderr is a file (cron mail,
CI logs), and on a terminal a bar that log lines never land on."""

from __future__ import annotations

import io
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY

LINE = re.compile(
    r"^(\d\d):(\d\d):(\d\d) INFO step (\d+)/(\d+) \(\d+%\) epoch \d+ loss \d+\.\d{4}"
    r" lr \d\.\de[-+]\d\d \d+\.\d samples/s eta \S+$"
)


def _seconds(match: re.Match[str]) -> int:
    h, m, s = (int(match.group(i)) for i in (1, 2, 3))
    return h * 3600 + m * 60 + s


def test_progress_lines_off_terminal_at_the_set_cadence(tmp_path: Path) -> None:
    """`ftc train` with stderr in a file prints `step N/T ... eta` at step 1 and then once
    per `log.progress_every` seconds. The run is long (many steps) and stopped with SIGTERM
    once three interval lines were seen, so the test does not depend on machine speed."""
    err_path = tmp_path / "stderr.txt"
    overrides = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every"))]
    args = ["train", "demo", *overrides, "train.max_steps=100000", "train.eval_every=100000"]
    args += ["log.progress_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fine_tune_cli", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 240
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                found = [LINE.match(line) for line in err_path.read_text().splitlines()]
                if sum(m is not None for m in found) >= 4:  # step 1 + three intervals
                    break
                time.sleep(0.3)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    text = err_path.read_text()
    lines = [m for m in (LINE.match(line) for line in text.splitlines()) if m]
    assert len(lines) >= 4, text[-3000:]
    assert lines[0].group(4) == "1", "the first progress line is step 1"
    assert all(m.group(5) == "100000" for m in lines)
    steps = [int(m.group(4)) for m in lines]
    assert steps == sorted(set(steps)), steps
    gaps = [_seconds(b) - _seconds(a) for a, b in itertools.pairwise(lines)]
    # At least one interval apart (timestamps are whole seconds, so >= 1 holds exactly);
    # at most a few (a step plus rounding; the cores are shared with other jobs).
    assert all(1 <= g <= 5 for g in gaps), gaps
    assert (tmp_path / "runs" / "demo" / "train.log").read_text().count(" samples/s eta ") >= 4


def _screen(raw: str) -> list[str]:
    """What a terminal shows after `raw`: carriage returns, erase-line and cursor-up are
    applied; other escape codes (colours, cursor visibility) dropped."""
    rows, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", raw):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(rows):
                rows.append("")
        elif token == "\r":
            col = 0
        elif token == "\x1b[2K":
            rows[row] = ""
        elif re.fullmatch(r"\x1b\[\d*A", token):
            row = max(0, row - int(token[2:-1] or 1))
        elif not token.startswith("\x1b"):
            line = rows[row].ljust(col)
            rows[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [r.rstrip() for r in rows if r.strip()]


def test_log_lines_print_above_the_bar_on_a_terminal() -> None:
    """Log lines go through the bar's live display: on screen each is its own line and the
    bar stays last, never `...0:00:30 21:20:03 INFO step 47 eval: accura`."""
    from rich.console import Console

    from fine_tune_cli import console

    buf = io.StringIO()
    console.setup_logging(console=Console(file=buf, force_terminal=True, width=120))
    try:
        with console.Progress(20, every=30, first_line=True) as progress:
            for step in range(1, 6):
                progress.update(step, fields={"loss": "0.5000"}, counts={"samples": 16})
                console.log.info("step %d eval: accuracy=0.8889", step)
    finally:
        console.setup_logging()
    screen = _screen(buf.getvalue())
    logged = [r for r in screen if "eval: accuracy" in r]
    assert len(logged) == 5, screen
    assert not any("━" in r or "/20" in r for r in logged), screen
    assert "5/20" in screen[-1] and "loss 0.5000" in screen[-1], screen
    assert "samples/s" in screen[-1]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.4, "59s"), (252, "4m12s"), (3780, "1h03m")]
)
def test_eta_format(seconds: float, text: str) -> None:
    from fine_tune_cli.console import format_duration

    assert format_duration(seconds) == text


def test_off_terminal_line_for_unknown_total_and_named_progress(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The generic API other commands use: a name prefix, another unit, no total."""
    from fine_tune_cli import console

    console.setup_logging()
    console.log.propagate = True  # let caplog see the records
    try:
        with caplog.at_level("INFO", logger="ftc"):
            p = console.Progress(None, every=30, unit="rows", name="prepare", first_line=True)
            p.update(500, counts={"rows": 500, "tokens": 12000})
            p.update(900, counts={"rows": 400})  # within the interval: no line
    finally:
        console.log.propagate = False
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert re.fullmatch(r"prepare: rows 500 [\d.]+ rows/s [\d.]+ tokens/s", lines[0]), lines
    assert p.eta() is None


def test_a_progress_inside_another_is_a_second_row_of_the_same_bar() -> None:
    """Validation batches during training: rich allows one live display per console, so
    the inner progress is a row of the training bar, gone when it closes."""
    from rich.console import Console

    from fine_tune_cli import console

    buf = io.StringIO()
    console.setup_logging(console=Console(file=buf, force_terminal=True, width=120))
    try:
        with console.Progress(10, every=30) as train:
            train.update(3, fields={"loss": "0.5000"})
            with console.Progress(4, unit="batch", name="eval validation") as inner:
                inner.advance(counts={"samples": 8})
                inner.advance(counts={"samples": 8})
                console.log.info("mid-eval line")
                middle = _screen(buf.getvalue())
            train.update(4, fields={"loss": "0.4000"})
    finally:
        console.setup_logging()
    assert any("eval validation" in r and "/4" in r for r in middle[-2:]), middle
    screen = _screen(buf.getvalue())
    assert not any("eval validation" in r for r in screen), screen
    assert any(r.endswith("mid-eval line") for r in screen), screen
    assert "4/10" in screen[-1] and "loss 0.4000" in screen[-1]


def test_progress_every_0_prints_no_lines(caplog: pytest.LogCaptureFixture) -> None:
    from fine_tune_cli import console

    console.setup_logging()
    console.log.propagate = True
    try:
        with (
            caplog.at_level("INFO", logger="ftc"),
            console.Progress(5, every=0, first_line=True) as p,
        ):
            for step in range(1, 6):
                p.update(step)
    finally:
        console.log.propagate = False
    assert not caplog.records


def test_rates_and_eta_leave_out_the_first_steps_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Step 1 took 60 s (compilation), steps 2..11 one second each: 10 more steps take
    10 s, not ~60 s as an average since the start would say."""
    from fine_tune_cli import console

    now = [0.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    console.setup_logging()
    p = console.Progress(21, every=0)  # t=0
    now[0] = 60.0
    p.update(1, counts={"samples": 8})  # t=60: the baseline
    for step in range(2, 12):
        now[0] += 1.0
        p.update(step, counts={"samples": 8})
    assert p.eta() == pytest.approx(10.0)
    assert "8.0 samples/s" in p.line()
