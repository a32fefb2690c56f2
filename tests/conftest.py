"""Shared fixtures: an isolated cache and working dir per test, and `ftc(...)`, which runs
the real CLI entry point in-process and returns (exit code, stdout, stderr)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_DATA = REPO / "data" / "demo" / "spam_demo.jsonl.gz"

# Small, fast settings for end-to-end runs on the bundled demo data.
TINY = [
    "model.size=tiny",
    "data.tokenizer.vocab_size=600",
    "data.source.limit=300",
    "train.max_steps=12",
    "train.eval_every=6",
    "train.batch_size=16",
    "data.max_length=64",
]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        lines = [line for line in self.out.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one JSON line on stdout, got: {self.out!r}"
        return json.loads(lines[0])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ftc-cache")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FTC_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("FTC_DEBUG", raising=False)
    monkeypatch.delenv("FTC_RUNS_DIR", raising=False)  # run dirs land in ./runs of tmp_path
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def ftc(capsys: pytest.CaptureFixture[str]):
    """Run `ftc ARGS...` in-process through the real entry point."""
    from fine_tune_cli.cli.app import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def ftc_subprocess(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    """Start `python -m fine_tune_cli ARGS` (for signals and kills)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "fine_tune_cli", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def needs_shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/data is optional)")
    return path


def run_cli(*args: str | Path, stdin: bytes | None = None) -> Result:
    """`ftc ARGS` in-process without capsys (usable from module/session fixtures),
    optionally fed stdin."""
    from fine_tune_cli.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if stdin is not None:
            mp = stack.enter_context(pytest.MonkeyPatch.context())
            mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def cli_env(cache_dir: Path, cwd: Path) -> Iterator[None]:
    """What the autouse `isolated` fixture sets up, for module/session-scoped fixtures."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_CACHE_DIR", str(cache_dir))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        mp.delenv("FTC_DEBUG", raising=False)
        mp.chdir(cwd)
        yield
