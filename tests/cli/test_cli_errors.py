"""Errors through the real CLI: exit codes, one `error:` line on stderr, no traceback,
one JSON object with --json; plus the `recipes` commands and a fast, torch-free `--help`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fine_tune_cli.recipe import builtin_recipes
from tests.conftest import DEMO_DATA, REPO, Result

MINIMAL = f"""\
name: bad
model:
  family: bert
data:
  source:
    path: {DEMO_DATA}
"""

BAD_RECIPES = {
    "unknown key": (MINIMAL + "optim: {lrr: 1.0e-3}\n", ["optim.lrr", "did you mean 'lr'"]),
    "wrong type": (MINIMAL + "train: {epochs: many}\n", ["train.epochs", "many"]),
    "unknown family": (
        MINIMAL.replace("family: bert", "family: bret"),
        ["model.family", "did you mean 'bert'"],
    ),
}

BAD_OVERRIDES = {
    "unknown key": ("optim.lrr=0.001", ["optim.lrr", "did you mean 'lr'"]),
    "wrong type": ("train.epochs=many", ["train.epochs", "many"]),
    "unknown family": ("model.family=bret", ["model.family", "did you mean 'bert'"]),
    # an int-or-'auto' key: one message, not one per member of the union
    "bad workers": ("train.workers=many", ["train.workers", "'auto' or a number of processes"]),
    "bad eval_every": ("train.eval_every=foo", ["train.eval_every", "positive number of steps"]),
}


def run(ftc, *args: str) -> Result:
    """`ftc ARGS`, failing the test (not erroring) when an exception escapes main()."""
    try:
        return ftc(*args)
    except Exception as exc:
        pytest.fail(
            f"`ftc {' '.join(args)}` let {type(exc).__module__}.{type(exc).__name__}: {exc}"
            " escape main() (a traceback and exit 1) instead of exiting 2 with one error line"
        )


def assert_one_error_line(result: Result, *fragments: str) -> str:
    assert "Traceback" not in result.err + result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {result.err!r}"
    line = lines[0]
    assert line.startswith("error:"), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def assert_json_error(result: Result, command: str, code: int, *fragments: str) -> dict:
    payload = result.json()  # exactly one JSON line on stdout
    assert payload["status"] == "error"
    assert payload["command"] == command
    assert payload["exit_code"] == code == result.code
    for fragment in fragments:
        assert fragment in payload["message"], payload
    return payload


# --------------------------------------------------------------------------- recipe errors
@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_bad_recipe_file_exits_2_with_one_error_line(case: str, ftc, tmp_path: Path):
    text, fragments = BAD_RECIPES[case]
    (tmp_path / "BAD.yaml").write_text(text)
    result = run(ftc, "train", "BAD.yaml")
    assert result.code == 2
    assert_one_error_line(result, "BAD.yaml", *fragments)
    assert result.out == ""


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_bad_recipe_file_json(case: str, ftc, tmp_path: Path):
    text, fragments = BAD_RECIPES[case]
    (tmp_path / "BAD.yaml").write_text(text)
    result = run(ftc, "train", "BAD.yaml", "--json")
    assert result.code == 2
    assert_json_error(result, "train", 2, "BAD.yaml", *fragments)
    assert_one_error_line(result, *fragments)  # human output still goes to stderr


@pytest.mark.parametrize("case", list(BAD_OVERRIDES))
def test_bad_override_exits_2_naming_the_override(case: str, ftc):
    override, fragments = BAD_OVERRIDES[case]
    result = run(ftc, "train", "demo", override)
    assert result.code == 2
    assert_one_error_line(result, f"override '{override}'", *fragments)


@pytest.mark.parametrize("case", list(BAD_OVERRIDES))
def test_bad_override_json(case: str, ftc):
    override, fragments = BAD_OVERRIDES[case]
    result = run(ftc, "train", "demo", override, "--json")
    assert_json_error(result, "train", 2, f"override '{override}'", *fragments)


def test_malformed_override_exits_2(ftc):
    result = run(ftc, "train", "demo", "foo")
    assert result.code == 2
    assert_one_error_line(result, "override 'foo'")


def test_several_problems_exit_2_listing_each(ftc, tmp_path: Path):
    (tmp_path / "BAD.yaml").write_text(MINIMAL + "optim: {lrr: 1.0e-3}\ntrain: {epochs: many}\n")
    result = run(ftc, "train", "BAD.yaml")
    assert result.code == 2
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert lines[0] == "error: 2 problems:"
    assert len(lines) == 3
    assert any("optim.lrr" in line for line in lines)
    assert any("train.epochs" in line for line in lines)


def test_unknown_builtin_recipe_suggests_the_closest(ftc):
    result = run(ftc, "train", "dmeo")
    assert result.code == 2
    assert_one_error_line(result, "dmeo", "did you mean 'demo'")
    result = run(ftc, "train", "dmeo", "--json")
    assert_json_error(result, "train", 2, "did you mean 'demo'")


# --------------------------------------------------------------------------- data errors
def test_missing_data_file_exits_3_naming_the_file(ftc):
    result = run(ftc, "train", "demo", "data.source.path=/nonexistent.jsonl")
    assert result.code == 3
    assert_one_error_line(result, "/nonexistent.jsonl")


def test_missing_data_file_json(ftc):
    result = run(ftc, "train", "demo", "data.source.path=/nonexistent.jsonl", "--json")
    assert_json_error(result, "train", 3, "/nonexistent.jsonl")


# --------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    ("args", "fragment"),
    [(("train", "demo", "--bogus"), "--bogus"), (("train",), "")],
    ids=["unknown-option", "missing-argument"],
)
def test_usage_errors_exit_2(args: tuple[str, ...], fragment: str, ftc):
    result = run(ftc, *args)
    assert result.code == 2
    assert_one_error_line(result, fragment)


@pytest.mark.parametrize(
    "args", [("train", "demo", "--bogus"), ("train",)], ids=["unknown-option", "missing-argument"]
)
def test_usage_errors_json(args: tuple[str, ...], ftc):
    result = run(ftc, *args, "--json")
    assert result.code == 2
    assert_json_error(result, "train", 2)


def test_usage_error_in_a_real_process_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "fine_tune_cli", "train", "demo", "--bogus"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "FTC_DEBUG": ""},
    )
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr


# --------------------------------------------------------------------------- recipes
def test_recipes_validate_demo(ftc):
    result = run(ftc, "recipes", "validate", "demo")
    assert result.code == 0, result.err
    result = run(ftc, "recipes", "validate", "demo", "--json")
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["status"] == "ok"
    assert payload["exit_code"] == 0
    checks = {c["check"]: c for c in payload["checks"]}
    assert {"recipe", "data", "model"} <= set(checks)
    assert all(c["ok"] for c in checks.values())


def test_recipes_validate_bad_override_exits_2(ftc):
    result = run(ftc, "recipes", "validate", "demo", "optim.lrr=0.001", "--json")
    assert_json_error(result, "recipes validate", 2, "override 'optim.lrr=0.001'")


def test_recipes_list(ftc):
    result = run(ftc, "recipes", "list")
    assert result.code == 0, result.err
    listed = [line.split()[0] for line in result.out.splitlines() if line.strip()]
    assert listed == [
        "bert-kjv-testament",
        "bert-mlm-kjv",
        "bert-mlm-nsp-kjv",
        "bert-spam",
        "bert-spam-distill",
        "bert-wordnet-tags",
        "demo",
        "gpt2-clm-kjv",
        "gpt2-kjv-testament",
        "minilm-spam",
        "minilm-wordnet-tags",
        "vit-digits",
        "vit-digits-from-mim",
        "vit-mim-digits",
        "wordnet-supersense",
    ]
    assert listed == sorted(builtin_recipes())
    payload = run(ftc, "recipes", "list", "--json").json()
    assert [r["name"] for r in payload["recipes"]] == listed
    assert all(r["description"] for r in payload["recipes"])


def test_recipes_show_demo(ftc):
    result = run(ftc, "recipes", "show", "demo")
    assert result.code == 0, result.err
    assert "name: demo" in result.out.splitlines()
    shown = yaml.safe_load(result.out)
    assert shown["name"] == "demo"
    assert shown["model"]["family"] == "bert"


def test_recipes_show_applies_overrides(ftc):
    shown = yaml.safe_load(run(ftc, "recipes", "show", "demo", "train.epochs=9").out)
    assert shown["train"]["epochs"] == 9


# --------------------------------------------------------------------------- startup
def test_help_is_fast():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fine_tune_cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    assert elapsed < 2.0, f"`ftc --help` took {elapsed:.2f}s"


def test_cli_import_does_not_import_torch():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fine_tune_cli.cli.app, sys; print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
