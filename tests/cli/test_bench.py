"""`make bench` keeps working: the four arms (ftc, stock Trainer, best Trainer, bare loop)
run on the same tiny setting and report every figure, as JSON and as a Markdown table
between the markers of a docs page (the prose around it kept). Slow (40 s, four training
processes): make test-slow runs it, keeping make test within its 10-minute budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY

pytestmark = pytest.mark.slow


def test_bench_runs_the_four_arms_and_writes_the_table(tmp_path) -> None:
    overrides = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every"))]
    page = tmp_path / "benchmarks.md"
    page.write_text("# prose\n<!-- bench:demo -->\nold\n<!-- /bench:demo -->\nafter\n")
    bench = [sys.executable, str(REPO / "scripts" / "bench.py"), "demo", "--repeats", "1"]
    bench += ["--steps", "4", "--threads", "1", *overrides, "train.batching=length_grouped"]
    bench += ["--md-out", str(page), "--json-out", str(tmp_path / "bench.json")]
    out = subprocess.run(
        bench,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {"train.max_steps=4", "train.eval_every=4"} <= set(report["overrides"])
    for arm in ("ftc", "stock", "best", "bare"):
        (run,) = report["runs"][arm]
        assert run["samples_per_s"] > 0 and run["tokens_per_s"] > 0
        assert 0.0 <= run["padding"] < 1.0 and run["peak_rss_mb"] > 100
        assert 0.0 <= run["validation_accuracy"] <= 1.0
    # ftc and the bare loop train on the same (grouped) batches: the same padding.
    assert report["runs"]["ftc"][0]["padding"] == report["runs"]["bare"][0]["padding"]
    assert set(report["ratios"]) == {"stock", "best", "bare"}
    text = page.read_text()
    assert text.startswith("# prose\n<!-- bench:demo -->\n") and text.endswith("after\n")
    assert "old" not in text and "| ftc |" in text and "| stock |" in text
