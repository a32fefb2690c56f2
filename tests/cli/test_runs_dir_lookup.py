"""$FTC_RUNS_DIR through the CLI: a run trained there from another working dir is found by
its name by every command that takes a run dir; and eval/predict report progress lines
at the run's log.progress_every when stderr is not a terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.test_e2e import demo_rows, write_jsonl
from tests.conftest import TINY, Result, cli_env, run_cli


@pytest.fixture(scope="module")
def runs_home(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Result]:
    """`ftc train demo` with FTC_RUNS_DIR set, from a working dir without ./runs; a tiny
    progress interval, so every progress update prints a line."""
    base = tmp_path_factory.mktemp("runs-home")
    (base / "work").mkdir()
    with cli_env(cache_dir, base / "work"), pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_RUNS_DIR", str(base / "home"))
        result = run_cli("train", "demo", *TINY, "log.progress_every=0.000001", "--json")
    assert result.code == 0, result.err
    assert Path(result.json()["run_dir"]) == base / "home" / "demo"
    assert not (base / "work" / "runs").exists()
    return base, result


@pytest.fixture
def in_work(runs_home: tuple[Path, Result], monkeypatch: pytest.MonkeyPatch) -> Path:
    base = runs_home[0]
    monkeypatch.chdir(base / "work")
    monkeypatch.setenv("FTC_RUNS_DIR", str(base / "home"))
    return base


def test_commands_find_a_run_by_name_under_ftc_runs_dir(in_work: Path, ftc) -> None:
    home = in_work / "home"
    evaluated = ftc("eval", "demo", "--json")
    assert evaluated.code == 0, evaluated.err
    assert evaluated.json()["run_dir"] == str(home / "demo")
    assert (home / "demo" / "eval" / "test" / "metrics.json").is_file()

    verified = ftc("verify", "demo", "--json")
    assert verified.code == 0 and verified.json()["run_dir"] == str(home / "demo")

    inputs = write_jsonl(in_work / "work" / "new.jsonl", demo_rows(2))
    predicted = ftc("predict", "demo", inputs, "--out", "-")
    assert predicted.code == 0, predicted.err
    assert len(predicted.out.splitlines()) == 4

    listed = ftc("runs", "list", "--json")
    assert [r["name"] for r in listed.json()["runs"]] == ["demo"]

    exported = ftc("export", "demo", "--json")
    assert exported.code == 0, exported.err
    assert (home / "demo" / "export" / "hf" / "manifest.json").is_file()

    # A path that exists still wins; a name found nowhere names where it was looked for.
    missing = ftc("eval", "no-such-run", "--json")
    assert missing.code == 2
    assert str(home) in missing.json()["message"] and "runs" in missing.json()["message"]


def test_eval_and_predict_report_progress_off_a_terminal(
    runs_home: tuple[Path, Result], in_work: Path, ftc
) -> None:
    train_err = runs_home[1].err
    # Validation inside training: named lines between the step lines.
    assert re.search(r"INFO eval validation: batch 1/\d+ \(\d+%\) [\d.]+ samples/s eta", train_err)
    evaluated = ftc("eval", "demo", "--split", "validation")
    assert evaluated.code == 0, evaluated.err
    lines = re.findall(r"eval validation: batch (\d+)/(\d+) .* samples/s eta \S+", evaluated.err)
    assert lines and lines[-1][0] == lines[-1][1], evaluated.err  # through the last batch
    inputs = write_jsonl(in_work / "work" / "more.jsonl", demo_rows(3))
    predicted = ftc("predict", "demo", inputs, "--out", in_work / "work" / "p.jsonl")
    assert predicted.code == 0, predicted.err
    assert re.search(r"predict: batch 1/1 \(100%\) [\d.]+ inputs/s eta 0s", predicted.err)
    assert all(json.loads(line)["label"] for line in (in_work / "work" / "p.jsonl").open())
