"""Property-based fuzzing of the real CLI, in-process: whatever a user types or feeds in,
`ftc` answers with a documented exit code, never an internal error (exit 1) or a
traceback, and with `--json` prints exactly one JSON object whose exit code matches.

`make test` runs ~240 cases (derandomized, so CI is repeatable); `make fuzz` runs ten times
as many with fresh randomness (FTC_FUZZ_SCALE=10). A failure prints the shrunk input.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO, TINY, Result, cli_env, run_cli

SCALE = int(os.environ.get("FTC_FUZZ_SCALE", "1"))
FULL = SCALE > 1

RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
DOCUMENTED = {0, 2, 3, 4, 5, 6, 7, 8, 9}


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=not FULL,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def schema_keys() -> list[str]:
    """Every dotted leaf key of the recipe schema (what `key=value` may name)."""
    from fine_tune_cli.recipe import Recipe, models_in

    def walk(models: list[Any], prefix: str) -> list[str]:
        keys = []
        # every variant's keys where a section is a union (optim: sgd | adam | ...)
        fields = {k: f for m in models for k, f in m.model_fields.items()}
        for name, field in fields.items():
            nested = models_in(field.annotation)
            if nested and nested[0].__name__ != "StepSpec":
                keys.extend(walk(nested, f"{prefix}{name}."))
            else:
                keys.append(f"{prefix}{name}")
        return keys

    return walk([Recipe], "")


KEYS = schema_keys()


def check(result: Result, json_mode: bool, allowed: set[int] = DOCUMENTED) -> dict[str, Any]:
    """The contract every invocation must keep, whatever its input."""
    assert "Traceback" not in result.err, result.err[-2000:]
    assert result.code != 1, f"internal error: {result.err[-1000:]}"
    assert result.code in allowed, (result.code, result.err[-1000:])
    event(f"exit {result.code}")  # the spread shows with --hypothesis-show-statistics
    if result.code:
        assert "error: " in result.err, result.err[-1000:]  # one human line says why
    if not json_mode:
        return {}
    payload = result.json()  # exactly one JSON line on stdout
    assert payload["exit_code"] == result.code, payload
    assert (payload["status"] == "ok") == (result.code == 0), payload
    if result.code:
        assert isinstance(payload["message"], str) and payload["message"].strip(), payload
    return payload


# --------------------------------------------------------------------------- strategies
WEIRD_TEXT = [
    "",
    " ",
    "null",
    "~",
    "true",
    "no",
    "0",
    "-1",
    "1e309",
    ".nan",
    "-.inf",
    "[1, 2",
    "{a: 1}",
    "[]",
    "{}",
    "'unterminated",
    '"quoted"',
    "${env:FTC_SURELY_UNSET}",
    "${env:HOME}",
    "${env:X:-3}",
    "${env:",
    "../../etc/passwd",
    "runs/x",
    "é漢字🙂",
    "a" * 300,
    "\x00",
    "key=value",
    "- item",
    "&anchor",
    "*alias",
    "!!python/object:os.system",
]

scalar_text = st.one_of(
    st.sampled_from(WEIRD_TEXT),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(string.printable, max_size=20),
    st.text(max_size=12),
)


def mutate_key(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            key,
            key.upper(),
            key + "x",
            key[:-1],
            key.replace(".", ".."),
            "." + key,
            key + ".",
            key.split(".")[-1],
            f"{key}.deeper",
            key.replace("_", "-"),
        ]
    )


override = st.one_of(
    st.tuples(st.sampled_from(KEYS).flatmap(mutate_key), scalar_text).map("=".join),
    st.tuples(st.sampled_from(KEYS), scalar_text).map("=".join),
    st.text(string.printable, max_size=30),  # anything at all, '=' or not
)


# --------------------------------------------------------------------------- 1. overrides
@fuzz_settings(80)
@given(
    recipe=st.sampled_from(RECIPES),
    overrides=st.lists(override, max_size=4),
    json_mode=st.booleans(),
)
def test_overrides_never_crash(recipe: str, overrides: list[str], json_mode: bool) -> None:
    args = ["recipes", "show", recipe, *overrides] + (["--json"] if json_mode else [])
    check(run_cli(*args), json_mode, {0, 2})


# --------------------------------------------------------------------------- 2. recipe files
def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.extend(_paths(v, (*prefix, i)))
    return out


yaml_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=True),
        st.sampled_from(WEIRD_TEXT),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def mutated_recipe(draw: st.DrawFn) -> str:
    """A built-in recipe's text after a few structural or textual edits."""
    name = draw(st.sampled_from(RECIPES))
    text = (REPO / "recipes" / f"{name}.yaml").read_text()
    if draw(st.booleans()):  # structural: edit the parsed tree
        tree = yaml.safe_load(text)
        for _ in range(draw(st.integers(1, 3))):
            paths = _paths(tree)
            if not paths:
                break
            path = draw(st.sampled_from(paths))
            parent = tree
            for part in path[:-1]:
                parent = parent[part]
            op = draw(st.sampled_from(["set", "delete", "add", "rename"]))
            if op == "set":
                parent[path[-1]] = draw(yaml_value)
            elif op == "delete":
                del parent[path[-1]]
            elif op == "add" and isinstance(parent, dict):
                parent[draw(st.sampled_from(KEYS)).split(".")[-1] + "_"] = draw(yaml_value)
            elif op == "rename" and isinstance(parent, dict):
                parent[str(path[-1]) + draw(st.sampled_from(["s", "_", "X"]))] = parent.pop(
                    path[-1]
                )
        return yaml.safe_dump(tree, allow_unicode=True)
    lines = text.splitlines()  # textual: cut, duplicate or garble a line
    i = draw(st.integers(0, max(0, len(lines) - 1)))
    op = draw(st.sampled_from(["cut", "dup", "indent", "garble", "truncate"]))
    if op == "cut":
        del lines[i]
    elif op == "dup":
        lines.insert(i, lines[i])
    elif op == "indent":
        lines[i] = "   " + lines[i]
    elif op == "garble":
        lines[i] = draw(st.text(max_size=30))
    else:
        lines = lines[:i]
    return "\n".join(lines) + "\n"


@fuzz_settings(50)
@given(text=mutated_recipe(), json_mode=st.booleans())
def test_mutated_recipe_files_never_crash(text: str, json_mode: bool, tmp_path: Path) -> None:
    path = tmp_path / "fuzzed.yaml"
    path.write_text(text, encoding="utf-8")
    # Relative names in built-in recipes (extends, data) point nowhere from tmp: also fine.
    args = ["recipes", "show", str(path)] + (["--json"] if json_mode else [])
    check(run_cli(*args), json_mode, {0, 2})


# --------------------------------------------------------------------------- 3. argv
WORDS = [
    "recipes",
    "list",
    "show",
    "validate",
    "runs",
    "eval",
    "verify",
    "predict",
    "export",
    "demo",
    "nonexistent-recipe",
    "runs/nothing",
    ".",
    "-",
    "--split",
    "test",
    "bogus",
    "--fail-under",
    "accuracy=0.5",
    "accuracy",
    "--out",
    "--format",
    "onnx",
    "--compare",
    "--data",
    "--overwrite",
    "--nproc",
    "0",
    "--resume",
    "auto",
    "--force",
    "--unknown-flag",
    "train.max_steps=abc",
    "model.size=huge",
    "",
]


@fuzz_settings(40)
@given(words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=6), json_mode=st.booleans())
def test_random_command_lines_never_crash(words: list[str], json_mode: bool) -> None:
    args = list(words) + (["--json"] if json_mode else [])
    if json_mode and "--out" in args:
        args.remove("--out")  # `--out - --json` is its own, tested, refusal
    result = run_cli(*args)
    if result.code == 0 and not json_mode:
        return  # e.g. `recipes list`: human output, nothing more to check
    check(result, json_mode)


@fuzz_settings(10)
@given(
    recipe=st.sampled_from(["demo", "vit-digits", "nonexistent-recipe"]),
    overrides=st.lists(override, max_size=2),
)
def test_train_dry_run_never_crashes(recipe: str, overrides: list[str]) -> None:
    result = run_cli("train", recipe, *overrides, "--dry-run", "--json")
    check(result, True, {0, 2, 3, 7})


# --------------------------------------------------------------------------- 4. data files
row_value = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=40),
    st.sampled_from(["spam", "ham", "SPAM", " ham", ""]),
    st.lists(st.integers(), max_size=2),
)
jsonl_row = st.one_of(
    st.fixed_dictionaries(
        {"text": st.text(min_size=0, max_size=80), "label": st.sampled_from(["spam", "ham"])}
    ),
    st.dictionaries(st.sampled_from(["text", "label", "other"]), row_value, max_size=3),
    st.text(max_size=40),  # not JSON at all
    st.sampled_from(["[1, 2]", "null", '{"text": "unterminated', "\ufeff{}", "   "]),
)


def render_jsonl(rows: list[Any]) -> str:
    return "".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in rows)


DATA_RECIPE = """\
version: 1
name: fuzz-data
model: {{family: bert, size: tiny}}
data:
  source: {{path: {path}, format: {fmt}}}
  steps: [unicode_normalize, collapse_whitespace]
  split: {{validation: 0.2, test: 0.0}}
  tokenizer: {{kind: wordpiece, vocab_size: 120}}
  max_length: 16
"""


@fuzz_settings(20)
@given(
    rows=st.lists(jsonl_row, min_size=0, max_size=30),
    good=st.integers(0, 30),
    raw=st.binary(max_size=60),
    fmt=st.sampled_from(["jsonl", "csv", "txt"]),
)
def test_prepare_on_hostile_data_never_crashes(
    rows: list[Any], good: int, raw: bytes, fmt: str, tmp_path: Path
) -> None:
    labels = ["spam", "ham"]
    clean = [
        {"text": f"message number {i} about {labels[i % 2]}", "label": labels[i % 2]}
        for i in range(good)
    ]
    data = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        data.write_bytes(render_jsonl(clean + rows).encode("utf-8", "surrogatepass") + raw)
    elif fmt == "csv":
        body = "text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in clean)
        extra = "".join(
            (",".join(str(v) for v in r.values()) if isinstance(r, dict) else str(r)) + "\n"
            for r in rows
        )
        data.write_bytes((body + extra).encode("utf-8", "surrogatepass") + raw)
    else:
        data.write_bytes("".join(r["text"] + "\n" for r in clean).encode() + raw)
    recipe = tmp_path / "fuzz.yaml"
    recipe.write_text(DATA_RECIPE.format(path=data.name, fmt=fmt))
    if fmt == "txt":  # plain text has no labels: pretraining data
        recipe.write_text(recipe.read_text().replace("family: bert,", "family: bert, task: mlm,"))
    result = run_cli("prepare", recipe, "--force", "--json")
    check(result, True, {0, 3})


# --------------------------------------------------------------------------- 5. predict
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    base = tmp_path_factory.mktemp("fuzz-model")
    with cli_env(cache_dir, base):
        result = run_cli("train", "demo", *TINY, "train.max_steps=4", "train.eval_every=4")
    assert result.code == 0, result.err
    return base / "runs" / "demo"


@fuzz_settings(15)
@given(
    rows=st.lists(jsonl_row, max_size=8),
    raw=st.binary(max_size=40),
    suffix=st.sampled_from([".jsonl", ".csv", ".txt", ".dat"]),
)
def test_predict_on_hostile_input_never_crashes(
    rows: list[Any], raw: bytes, suffix: str, tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / f"input{suffix}"
    data.write_bytes(render_jsonl(rows).encode("utf-8", "surrogatepass") + raw)
    out = tmp_path / "preds.jsonl"
    out.unlink(missing_ok=True)
    result = run_cli("predict", tiny_model, data, "--out", out, "--json")
    check(result, True, {0, 3})
    if result.code == 0:
        preds = [json.loads(line) for line in out.read_text().splitlines()]
        for p in preds:
            assert p["label"] in ("ham", "spam")
            assert abs(sum(p["probs"].values()) - 1.0) < 1e-4
    else:
        assert not out.exists()  # nothing half-written


RUN_WORDS = [
    "eval",
    "verify",
    "predict",
    "export",
    "RUN",
    "RUN/best",
    "RUN/checkpoints",
    "--split",
    "test",
    "validation",
    "train",
    "nope",
    "--fail-under",
    "accuracy=0.0",
    "accuracy=1.1",
    "f1_macro=abc",
    "nonsense=0.5",
    "--compare",
    "--data",
    "input.jsonl",
    "--format",
    "hf",
    "torchscript",
    "gif",
    "--out",
    "out-dir",
    "--overwrite",
    "export.max_abs_diff=0",
    "export.parity_samples=-3",
    "export.nope=1",
]


@fuzz_settings(15)
@given(
    command=st.sampled_from(["eval", "verify", "predict", "export"]),
    target=st.sampled_from(["RUN", "RUN/best", "RUN/checkpoints", "nope"]),
    rest=st.lists(st.sampled_from(RUN_WORDS), max_size=4),
    json_mode=st.booleans(),
)
def test_command_lines_on_a_real_run_never_crash(
    command: str, target: str, rest: list[str], json_mode: bool, tiny_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "input.jsonl").write_text('{"text": "win a prize now", "label": "spam"}\n')
    words = [command, target, *rest]
    args = [w.replace("RUN", str(tiny_model)) for w in words] + (["--json"] if json_mode else [])
    result = run_cli(*args)
    if result.code == 0 and not json_mode:
        return
    check(result, json_mode)


# --------------------------------------------------------------------------- 6. images
@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    base = tmp_path_factory.mktemp("fuzz-vit")
    with cli_env(cache_dir, base):
        result = run_cli(
            "train", "vit-digits", "model.size=tiny", "data.source.limit=120", "train.max_steps=2"
        )
    assert result.code == 0, result.err
    return base / "runs" / "vit-digits"


image_file = st.one_of(
    st.tuples(
        st.just("ok"),
        st.integers(4, 40),  # side
        st.sampled_from(["L", "RGB", "RGBA", "P", "I;16"]),
        st.sampled_from(["png", "jpg", "bmp"]),
    ),
    st.tuples(st.just("bytes"), st.binary(max_size=64), st.sampled_from(["png", "jpg"])),
    st.tuples(st.just("cut"), st.integers(1, 60), st.just("png")),  # truncated PNG
)


def write_image(spec: tuple, path_stem: Path, seed: int) -> Path:
    import io

    import numpy as np
    from PIL import Image

    kind = spec[0]
    if kind == "bytes":
        path = path_stem.with_suffix("." + spec[2])
        path.write_bytes(spec[1])
        return path
    rng = np.random.default_rng(seed)
    side, mode, ext = (spec[1], spec[2], spec[3]) if kind == "ok" else (12, "L", "png")
    image = Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).convert(mode)
    if ext != "png" and mode not in ("L", "RGB"):  # only PNG stores every mode
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format={"png": "PNG", "jpg": "JPEG", "bmp": "BMP"}[ext])
    data = buffer.getvalue()
    path = path_stem.with_suffix("." + ext)
    path.write_bytes(data if kind == "ok" else data[: spec[1]])
    return path


@fuzz_settings(10)
@given(files=st.lists(image_file, min_size=1, max_size=4))
def test_image_predict_on_hostile_files_never_crashes(
    files: list[tuple], tiny_vit: Path, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "images"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for i, spec in enumerate(files):
        write_image(spec, folder / f"img{i}", seed=i)
    out = tmp_path / "preds.jsonl"
    out.unlink(missing_ok=True)
    result = run_cli("predict", tiny_vit, folder, "--out", out, "--json")
    check(result, True, {0, 3})
    if result.code == 0:
        assert len(out.read_text().splitlines()) == len(files)
    else:
        assert not out.exists()
    if all(spec[0] == "ok" for spec in files):
        assert result.code == 0, result.err  # every well-formed image is predicted
