"""Training longer: `--resume` may change the run's length (train.max_steps, train.epochs),
its cadence and early-stopping patience (engine/run.py RESUME_FREE). The LR schedule is then
recomputed for the new length and the log says so; any other change is still refused,
listing the keys. Through the real CLI, in-process, on the tiny demo settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

BASE = [
    *(o for o in TINY if not o.startswith("train.max_steps")),
    "train.device=cpu",
    "log.every=1",
]
RECOMPUTED = (
    "resume: run length 20 -> 40 steps; the LR schedule is recomputed for 40 steps from"
    " step 20, so the result is not bitwise that of an uninterrupted 40-step run"
)


def steps_logged(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def lrs_logged(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["lr"] for r in map(json.loads, lines) if "lr" in r}


@pytest.fixture
def twenty_steps(ftc) -> Path:
    """A complete 20-step run of the demo recipe (checkpoint at step 20)."""
    r = ftc("train", "demo", *BASE, "train.max_steps=20", "--json")
    assert r.code == 0, r.err
    run_dir = Path("runs/demo")
    assert (run_dir / "checkpoints/step-000020/COMPLETE").is_file()
    return run_dir


def test_resume_with_a_raised_max_steps_trains_on_and_says_the_schedule_changed(
    twenty_steps: Path, ftc
):
    run_dir = twenty_steps
    r = ftc("train", "demo", *BASE, "train.max_steps=40", "--resume", "auto", "--json")
    assert r.code == 0, r.err
    assert r.json()["steps"] == 40
    assert steps_logged(run_dir) == list(range(1, 41))  # steps 21-40 appended, none twice
    assert (run_dir / "checkpoints/step-000040/COMPLETE").is_file()
    log = (run_dir / "train.log").read_text()
    assert RECOMPUTED in log
    assert "resume: changed since the checkpoint: train.max_steps (20 -> 40)" in log
    # Warmup (a ratio) and decay now span 40 steps: the LR after step 21 is the 40-step
    # schedule's, no longer 0 as the 20-step one had reached.
    from fine_tune_cli.engine.optim import lr_factor
    from fine_tune_cli.runs import read_recipe_lock

    recipe = read_recipe_lock(run_dir / "recipe.lock.yaml")
    assert recipe.train.max_steps == 40
    lrs = lrs_logged(run_dir)
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)
    assert lrs[21] > 0
    assert lrs[21] == pytest.approx(recipe.optim.lr * lr_factor(recipe.schedule, 40)(21))
    assert lrs[40] == pytest.approx(0.0, abs=1e-12)
    assert ftc("verify", run_dir).code == 0


def test_other_changes_are_still_refused_listing_only_those_keys(twenty_steps: Path, ftc):
    before = sorted(p.name for p in (twenty_steps / "checkpoints").iterdir())
    r = ftc(
        "train",
        "demo",
        *BASE,
        "train.max_steps=40",
        "optim.lr=0.1",
        "schedule.name=cosine",
        "--resume",
        "auto",
        "--json",
    )
    assert r.code == 2, r.err
    message = r.json()["message"]
    assert message.endswith(
        "was trained with a different recipe: optim.lr (0.001 -> 0.1);"
        " schedule.name ('linear' -> 'cosine')"
    ), message
    assert "max_steps" not in message
    assert sorted(p.name for p in (twenty_steps / "checkpoints").iterdir()) == before


def test_a_run_cannot_be_cut_short_of_its_checkpoint(twenty_steps: Path, ftc):
    r = ftc("train", "demo", *BASE, "train.max_steps=10", "--resume", "auto", "--json")
    assert r.code == 2
    assert r.json()["message"] == (
        "--resume: the checkpoint is at step 20, past the 10 steps that train.max_steps /"
        " train.epochs now give; set a length of at least 20 steps (was 20)"
    )


def test_raised_epochs_extend_a_run(ftc):
    """Epoch-based length: one epoch of the tiny demo's train split at batch 16 is 14 steps."""
    base = [*BASE, "train.max_steps=null", "train.eval_every=epoch"]
    assert ftc("train", "demo", *base, "train.epochs=1", "--json").json()["steps"] == 14
    r = ftc("train", "demo", *base, "train.epochs=2", "--resume", "auto", "--json")
    assert r.code == 0, r.err
    assert (r.json()["steps"], r.json()["epochs"]) == (28, 2)
    assert "resume: run length 14 -> 28 steps" in Path("runs/demo/train.log").read_text()


def test_a_run_stopped_early_continues_when_patience_is_raised(ftc):
    """min_delta 10 never counts as better after the first eval: patience 1 stops at the
    second eval (step 4). Resumed with patience 5 it trains on to max_steps."""
    base = [*BASE, "train.max_steps=12", "train.eval_every=2", "train.early_stopping.min_delta=10"]
    first = ftc("train", "demo", *base, "train.early_stopping.patience=1", "--json")
    assert first.code == 0, first.err
    assert (first.json()["steps"], first.json()["stopped_early"]) == (4, True)
    same = ftc("train", "demo", *base, "train.early_stopping.patience=1", "--resume", "auto")
    assert same.code == 0 and steps_logged(Path("runs/demo"))[-1] == 4  # still stopped
    r = ftc("train", "demo", *base, "train.early_stopping.patience=5", "--resume", "auto", "--json")
    assert r.code == 0, r.err
    assert r.json()["steps"] == 12
    assert "training continues" in Path("runs/demo/train.log").read_text()


def test_the_first_step_after_a_new_length_uses_the_new_schedule():
    """_recompute_lr: the optimizer's LR at the checkpoint's step follows the new length
    (the loaded optimizer state carries the old schedule's LR)."""
    from fine_tune_cli.engine.optim import Schedule, lr_factor
    from fine_tune_cli.engine.run import _recompute_lr
    from fine_tune_cli.recipe.schema import ScheduleSpec

    spec = ScheduleSpec(name="linear")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    old = Schedule(optimizer, spec, 20)
    for _ in range(10):
        optimizer.step()
        old.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    new = Schedule(optimizer, spec, 40)
    new.load_state_dict(old.state_dict())
    _recompute_lr(new)
    assert optimizer.param_groups[0]["lr"] == lr_factor(spec, 40)(10) == 0.75


def test_a_run_stepped_with_foreach_resumes_from_a_recipe_that_says_fused(ftc):
    """Runs made before optim.fused (their locks migrate to false) resume from the user's
    own recipe, whose default is now true: the optimizer kernel may change on resume."""
    r = ftc("train", "demo", *BASE, "train.max_steps=4", "optim.fused=false", "--json")
    assert r.code == 0, r.err
    r = ftc("train", "demo", *BASE, "train.max_steps=8", "--resume", "auto", "--json")
    assert r.code == 0, r.err
    assert r.json()["steps"] == 8
    log = Path("runs/demo/train.log").read_text()
    assert "optim.fused (False -> True)" in log
    provenance = json.loads(Path("runs/demo/provenance.json").read_text())
    assert provenance["runtime"]["optimizer_impl"] == "fused"
