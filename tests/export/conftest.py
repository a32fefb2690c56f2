"""One tiny BERT spam classifier (bundled demo data) trained once for tests/export, and
every export format written once from it with the default --out."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import DEMO_DATA, TINY, Result, cli_env, run_cli

FORMATS = ("hf", "onnx", "pt2", "int8", "pruned")
FAST = ["export.latency_runs=3"]
TRAIN_ROWS = 300  # TINY's data.source.limit: demo rows past it were never trained on


def raw_rows(n: int) -> list[dict]:
    """Raw emails of both labels from the bundled demo data (what predict gets in use)."""
    rows = demo_rows()
    spam = [r for r in rows if r["label"] == "spam"][: n // 2]
    ham = [r for r in rows if r["label"] == "ham"][: n - len(spam)]
    return [r for pair in zip(spam, ham, strict=False) for r in pair] + ham[len(spam) :]


def demo_rows() -> list[dict]:
    with gzip.open(DEMO_DATA, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="package")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-predict")


@pytest.fixture(scope="package")
def run_dir(workdir: Path, cache_dir: Path) -> Path:
    with cli_env(cache_dir, workdir):
        result = run_cli("train", "demo", *TINY, "--json")
    assert result.code == 0, result.err
    return workdir / "runs" / "demo"


@pytest.fixture(scope="package")
def exports(run_dir: Path, workdir: Path, cache_dir: Path) -> dict[str, tuple[Result, Path]]:
    """Every format exported once with its default --out (RUN_DIR/export/<format>/)."""
    done = {}
    with cli_env(cache_dir, workdir):
        for fmt in FORMATS:
            result = run_cli("export", run_dir, "--format", fmt, *FAST, "--json")
            assert result.code == 0, f"{fmt}: {result.err}"
            done[fmt] = (result, run_dir / "export" / fmt)
    return done
