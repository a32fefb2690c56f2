"""`ftc generate` on a tiny GPT-2 CLM run trained through the CLI (the session's clm_run):
one prompt, seeds, --json, stdin batches as jsonl, and the refusal of a classifier."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY, Result, cli_env, run_cli

PROMPT = "And God said"
FIXED = ["--max-new-tokens", "6", "--seed", "7"]


@pytest.fixture(scope="module")
def clm(clm_run: tuple[Result, Path]) -> Path:
    return clm_run[1]


def test_a_prompt_prints_its_continuation(clm: Path, ftc) -> None:
    result = ftc("generate", clm, PROMPT, *FIXED)
    assert result.code == 0, result.err
    assert result.out.startswith(PROMPT)
    assert len(result.out.strip()) > len(PROMPT), "no continuation"
    again = ftc("generate", clm, PROMPT, *FIXED)
    assert again.out == result.out, "same seed, same text"
    others = {
        ftc("generate", clm, PROMPT, "--max-new-tokens", "6", "--seed", str(s)).out
        for s in range(4)
    }
    assert len(others) > 1, "the seed changes sampled text"
    unseeded = ftc("generate", clm, PROMPT, "--max-new-tokens", "2")
    assert unseeded.code == 0 and "pass --seed" in unseeded.err  # the drawn seed is logged


def test_json_is_one_object_with_the_completions(clm: Path, ftc) -> None:
    result = ftc("generate", clm, PROMPT, *FIXED, "--num-return-sequences", "3", "--json")
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["status"] == "ok" and payload["command"] == "generate"
    assert payload["prompt"] == PROMPT and len(payload["completions"]) == 3
    assert all(isinstance(c, str) for c in payload["completions"])
    assert payload["seed"] == 7 and payload["settings"]["max_new_tokens"] == 6
    assert payload["run_dir"] == str(clm)
    one = ftc("generate", clm, PROMPT, *FIXED, "--json").json()["completions"]
    text = ftc("generate", clm, PROMPT, *FIXED).out
    assert len(one) == 1 and text.rstrip("\n") == PROMPT + one[0]
    greedy = [
        ftc("generate", clm, PROMPT, "--temperature", "0", "--seed", str(s), "--json").json()
        for s in (1, 2)
    ]
    assert greedy[0]["completions"] == greedy[1]["completions"], "temperature 0 is greedy"


def test_stdin_prompts_become_jsonl_rows(clm: Path, tmp_path: Path) -> None:
    prompts = b"And God said\n\nIn the beginning\nlet there be\n"
    result = run_cli("generate", clm, "-", *FIXED, stdin=prompts)
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert [r["prompt"] for r in rows] == ["And God said", "In the beginning", "let there be"]
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert all(len(r["completions"]) == 1 for r in rows)
    # The first row does not depend on the batch: the same as that prompt alone.
    alone = run_cli("generate", clm, PROMPT, *FIXED, "--json")
    assert rows[0]["completions"] == alone.json()["completions"]
    out = tmp_path / "completions.jsonl"
    written = run_cli("generate", clm, "-", *FIXED, "--out", out, "--json", stdin=prompts)
    assert written.code == 0, written.err
    assert written.json()["outputs"]["completions"] == str(out)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_runs_dir_name_and_best_dir(clm: Path, tmp_path: Path, monkeypatch) -> None:
    """A run name is found under $FTC_RUNS_DIR; best/ works as the model dir too."""
    runs = tmp_path / "elsewhere"
    shutil.copytree(clm, runs / "my-lm")
    monkeypatch.setenv("FTC_RUNS_DIR", str(runs))
    by_name = run_cli("generate", "my-lm", PROMPT, *FIXED, "--json")
    assert by_name.code == 0, by_name.err
    assert by_name.json()["model_dir"] == str(runs / "my-lm" / "best")
    by_best = run_cli("generate", runs / "my-lm" / "best", PROMPT, *FIXED, "--json")
    assert by_best.json()["completions"] == by_name.json()["completions"]
    missing = run_cli("generate", "no-such-run", PROMPT, "--json")
    assert missing.code == 2 and str(runs) in missing.json()["message"]


def test_usage_errors_exit_2(clm: Path, ftc) -> None:
    for args in (["--top-p", "0"], ["--temperature", "-1"], ["--num-return-sequences", "0"]):
        result = ftc("generate", clm, PROMPT, *args, "--json")
        assert result.code == 2, (args, result.err)
        assert result.json()["status"] == "error"
    both = ftc("generate", clm, PROMPT, "--out", "-", "--json")
    assert both.code == 2 and "--out -" in both.json()["message"]


def test_a_classifier_is_refused_naming_predict(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> None:
    base = tmp_path_factory.mktemp("classifier")
    steps = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every"))]
    with cli_env(cache_dir, base):
        trained = run_cli("train", "demo", *steps, "train.max_steps=1", "train.eval_every=1")
        assert trained.code == 0, trained.err
        result = run_cli("generate", "runs/demo", PROMPT, "--json")
    assert result.code == 2, result.err
    assert "ftc predict" in result.json()["message"]
    assert "ftc predict" in result.err


class _Terminal(io.StringIO):
    """stdout that says it is a terminal and keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_on_a_terminal_the_text_streams(clm: Path, ftc) -> None:
    """The prompt first, then the continuation as generate() makes it (TextStreamer):
    the same text as without a terminal, in several writes."""
    from fine_tune_cli.cli.app import main

    plain = ftc("generate", clm, PROMPT, *FIXED).out
    terminal = _Terminal()
    with contextlib.redirect_stdout(terminal), pytest.raises(SystemExit) as exit_:
        main(["generate", str(clm), PROMPT, *FIXED])
    assert exit_.value.code in (0, None)
    assert terminal.getvalue() == plain
    assert terminal.writes[0] == PROMPT and len([w for w in terminal.writes if w]) >= 2
