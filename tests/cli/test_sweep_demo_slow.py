"""`ftc sweep demo demo-space` (make test-slow): 8 trials over 3 parameters on the bundled
demo finish within 10 minutes, at least one trial is pruned, and the result says whether
the best trial beat the recipe's own values (trial 0) and by how much."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import ftc_subprocess

optuna = pytest.importorskip("optuna")


@pytest.mark.slow
def test_demo_sweep_8_trials_within_10_minutes(tmp_path: Path) -> None:
    out = tmp_path / "demo-sweep"
    started = time.time()
    proc = ftc_subprocess(
        "sweep", "demo", "demo-space", "--parallel", "2", "--out", str(out), "--json", cwd=tmp_path
    )
    stdout, stderr = proc.communicate(timeout=1800)
    wall = time.time() - started
    print(stderr[-4000:])
    assert proc.returncode == 0, stderr[-2000:]
    p = json.loads(stdout.strip().splitlines()[-1])
    print(f"wall {wall:.0f}s; {p['verdict']}")
    counted = [r for r in p["trials"] if r["state"] in ("complete", "pruned", "failed")]
    assert len(counted) == 8 and len(p["best"]["params"]) == 3
    assert p["counts"]["pruned"] >= 1, "no trial was pruned"
    base, best = p["baseline"], p["best"]
    assert base is not None and base["trial"] == 0
    if best["trial"] != base["trial"]:
        assert p["improvement"] > 0 and "better by" in p["verdict"]
    else:
        assert "worse by" in p["verdict"] or "Only the recipe's own values" in p["verdict"]
    study = optuna.load_study(study_name="demo", storage=p["study"]["storage"])
    assert len(study.trials) == 8
    assert wall < 600, f"the sweep took {wall:.0f}s (cores shared with other jobs?)"
