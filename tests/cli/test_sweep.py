"""`ftc sweep`: SPACE validation, the missing extra, and one small sweep on the bundled
demo that is SIGKILLed mid-trial and resumed (the study opens with optuna.load_study;
finished trials are not redone; killed ones rerun with the same parameters)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, ftc_subprocess

optuna = pytest.importorskip("optuna")

# Few steps, four evals: enough for the pruner to see a trial trailing trial 0.
FEW_STEPS = [*[o for o in TINY if "max_steps" not in o and "eval_every" not in o]]
FEW_STEPS += ["train.max_steps=8", "train.eval_every=2"]


def write_space(path: Path, **changes: object) -> Path:
    """Trial 0 runs the recipe's lr (1e-3, outside the range); every other trial gets an
    lr 100x smaller, so its loss trails trial 0's and the median pruner stops it."""
    space = {
        "metric": "loss",
        "direction": "minimize",
        "trials": 3,
        "sampler": "tpe",
        "seed": 0,
        "pruner": {"startup_trials": 1, "warmup_evals": 1},
        "space": {
            "optim.lr": {"log_uniform": [1.0e-6, 1.0e-5]},
            "train.batch_size": {"choice": [8, 16]},
            "schedule.warmup_ratio": {"uniform": [0.0, 0.2]},
        },
    }
    space.update(changes)
    path.write_text(yaml.safe_dump(space))
    return path


def test_bad_space_keys_exit_2_naming_the_file_and_key(ftc, tmp_path: Path) -> None:
    space = write_space(
        tmp_path / "space.yaml",
        direction="max",
        space={"optim.lrr": {"log_uniform": [1e-5, 1e-3]}},
    )
    r = ftc("sweep", "demo", space, "--json")
    assert r.code == 2
    msg = r.json()["message"]
    assert f"{space}: direction: expected 'maximize' or 'minimize'" in msg
    write_space(space, space={"optim.lrr": {"log_uniform": [1e-5, 1e-3]}, "train": {"int": [1, 2]}})
    r = ftc("sweep", "demo", space, "--json")
    assert r.code == 2
    msg = r.json()["message"]
    assert f"{space}: space.optim.lrr: not a recipe key; did you mean 'optim.lr'?" in msg
    assert "space.train: is a recipe section" in msg
    write_space(space, space={"model.dropout": {"uniform": [0.0, 1.0]}})
    r = ftc("sweep", "demo", space)
    assert r.code == 2
    assert "space.model.dropout: uniform value 1.0 makes the recipe invalid" in r.err
    write_space(space, sampler="grid")
    r = ftc("sweep", "demo", space)
    assert r.code == 2 and "sampler: grid needs choice or int keys; optim.lr" in r.err
    assert not Path("runs").exists(), "nothing is written before the SPACE file is valid"


def test_missing_optuna_is_exit_2_with_the_pip_line(ftc, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    r = ftc("sweep", "demo", write_space(tmp_path / "space.yaml"), "--json")
    assert r.code == 2
    assert "pip install 'fine_tune_cli[sweep]'" in r.json()["message"]


def test_existing_sweep_needs_resume_and_the_same_space(ftc, tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml")
    out = tmp_path / "sw"
    out.mkdir()
    (out / "study.db").write_bytes(b"")
    r = ftc("sweep", "demo", space, "--out", out, "--json")
    assert r.code == 7 and "pass --resume" in r.json()["message"]
    (out / "sweep.json").write_text(json.dumps({"metric": "f1_macro"}))
    r = ftc("sweep", "demo", space, "--out", out, "--resume", "--json")
    assert r.code == 2 and "--resume with a different" in r.json()["message"]


def _trial_started(out: Path, number: int, deadline: float) -> None:
    while not (out / f"trial-{number:03d}" / "trial.stderr").is_file():
        assert time.time() < deadline, "the sweep never started that trial"
        time.sleep(0.5)


def test_sweep_killed_and_resumed_finishes_without_redoing_trials(ftc, tmp_path: Path) -> None:
    """3 trials x 8 steps. SIGKILL the sweep while trial 1 runs; --resume marks trial 1
    killed, reruns its parameters, finishes the budget, and trial 0 stays as it was."""
    space = write_space(tmp_path / "space.yaml")
    out = tmp_path / "demo-sweep"
    args = ["sweep", "demo", str(space), *FEW_STEPS, "--out", str(out)]
    proc = ftc_subprocess(*args, cwd=tmp_path)
    try:
        _trial_started(out, 1, time.time() + 300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{out / 'study.db'}")
    before = {t.number: t for t in study.trials}
    log = (out / "trial-000" / "trial.stderr").read_text()[-1500:]
    assert before[0].state.name == "COMPLETE" and before[1].state.name == "RUNNING", log
    finished_0 = json.loads((out / "trial-000" / "provenance.json").read_text())["finished"]

    r = ftc(*args, "--resume", "--json")
    assert r.code == 0, r.err
    p = r.json()
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{out / 'study.db'}")
    trials = {t.number: t for t in study.trials}
    # trial 0 untouched; trial 1 failed as killed and rerun with the same parameters
    assert trials[0].state.name == "COMPLETE" and trials[0].value == before[0].value
    assert json.loads((out / "trial-000" / "provenance.json").read_text())["finished"] == finished_0
    assert trials[1].state.name == "FAIL"
    rerun = [t for t in trials.values() if t.user_attrs.get("rerun_of") == 1]
    assert len(rerun) == 1 and rerun[0].params == before[1].params
    budget = [t for t in trials.values() if t.state.is_finished() and t.number != 1]
    assert len(budget) == 3 and len(trials) == 4
    # trials with lr 100x below trial 0's trail its loss: the median pruner stops them
    assert p["counts"]["pruned"] >= 1 and p["counts"]["killed"] == 1
    assert p["trials"][0]["trial"] == 0 and p["best"]["trial"] == 0
    assert "Only the recipe's own values completed" in p["verdict"]
    assert "too few complete trials" in p["importances_note"]
    # each trial a normal run dir without checkpoints; best/ kept
    for t in budget:  # (trial 1 was killed before it logged anything)
        run = out / f"trial-{t.number:03d}"
        assert (run / "metrics.jsonl").is_file() and not (run / "checkpoints").exists()
    assert (out / "trial-000" / "best" / "config.json").is_file()
    lock = yaml.safe_load((out / "trial-000" / "recipe.lock.yaml").read_text())
    assert lock["train"]["run_dir"] == str(out / "trial-000")
    assert lock["train"]["best_metric"] == "loss" and lock["optim"]["lr"] == 0.001
    board = (out / "leaderboard.md").read_text()
    assert "| 1 | killed |" in board and "pruned at eval" in board
    assert p["run_dir"] == str(out / "trial-000")
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and (out / "metric_vs_trial.png").is_file()
    best = out / "best-recipe.yaml"
    assert yaml.safe_load(best.read_text())["name"] == "demo-best"
    assert ftc("recipes", "validate", best).code == 0


def test_resume_is_a_flag_of_sweep_but_takes_a_value_in_train(ftc, tmp_path: Path) -> None:
    """The "option given as another option's value" guard reads the named command's options."""
    r = ftc("train", "demo", "--resume", "--json")
    assert r.code == 2 and "option --resume needs a value" in r.json()["message"]
    r = ftc("sweep", "demo", "no-such-space.yaml", "--resume", "--json")
    assert r.code == 2 and "no-such-space.yaml: SPACE file not found" in r.json()["message"]
