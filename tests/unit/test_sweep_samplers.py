"""Sweep samplers without training: grid visits every point once and then reports itself
spent (ask/tell has no study.stop), `seed:` makes proposals repeatable, queued trials
(trial 0, reruns) suggest only their fixed keys."""

from __future__ import annotations

import pytest

from fine_tune_cli.sweep.space import SpaceFile
from fine_tune_cli.sweep.study import _grid_done, _pruner, _sampler, suggest

optuna = pytest.importorskip("optuna")


def space(**changes: object) -> SpaceFile:
    data = {
        "metric": "f1_macro",
        "direction": "maximize",
        "seed": 3,
        "space": {"train.batch_size": {"choice": [16, 32]}, "train.epochs": {"int": [1, 2]}},
    }
    return SpaceFile.model_validate({**data, **changes})


def study_of(spec: SpaceFile) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        direction=spec.direction, sampler=_sampler(spec, 10, 1), pruner=_pruner(spec)
    )


def test_grid_visits_each_point_once_then_is_done() -> None:
    spec = space(sampler="grid")
    study = study_of(spec)
    study.enqueue_trial({"train.batch_size": 16}, user_attrs={"fixed_keys": ["train.batch_size"]})
    seen = []
    while not _grid_done(study):
        trial = study.ask()
        params = suggest(trial, spec)
        seen.append(params)
        study.tell(trial, float(len(seen)))
        assert len(seen) < 10, "grid never ran out"
    assert seen[0] == {"train.batch_size": 16}  # the queued trial: its fixed key only
    grid = sorted((p["train.batch_size"], p["train.epochs"]) for p in seen[1:])
    assert grid == [(16, 1), (16, 2), (32, 1), (32, 2)]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_seed_fixes_the_proposals(sampler: str) -> None:
    def proposals(seed: int) -> list[dict]:
        spec = space(sampler=sampler, seed=seed, space={"optim.lr": {"log_uniform": [1e-5, 1e-2]}})
        study = study_of(spec)
        out = []
        for _ in range(4):
            trial = study.ask()
            out.append(suggest(trial, spec))
            study.tell(trial, out[-1]["optim.lr"])
        return out

    assert proposals(1) == proposals(1)
    assert proposals(1) != proposals(2)
