"""`make bench` keeps working: both sides run on the same tiny setting and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO, TINY


def test_bench_compares_ftc_with_the_stock_trainer(tmp_path) -> None:
    overrides = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every"))]
    bench = [sys.executable, str(REPO / "scripts" / "bench.py"), "demo", "--runs", "1", "--json"]
    out = subprocess.run(
        [*bench, *overrides, "train.max_steps=4"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert "train.eval_every=4" in report["overrides"]
    for side in ("ftc", "trainer"):
        assert len(report["runs"][side]) == 1
        figures = report[side]
        assert figures["wall_s"] > 0 and figures["samples_per_s"] > 0
        assert 0.0 <= figures["validation_accuracy"] <= 1.0
    assert report["wall_ratio_ftc_over_trainer"] > 0
