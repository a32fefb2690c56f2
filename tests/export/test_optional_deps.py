"""A missing optional dependency is exit 2 with the exact pip line (never exit 1
"internal error: ModuleNotFoundError"): every optional import goes through
fine_tune_cli.optional.require. Modules are hidden with `sys.modules[name] = None`, which
makes `import name` fail as if it were not installed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

EXPORT_LINE = "pip install 'fine_tune_cli[export]'"


@pytest.mark.parametrize(
    ("fmt", "module"),
    [("onnx", "onnx"), ("onnx", "onnxscript"), ("onnx", "onnxruntime"), ("int8", "onnxruntime")],
)
def test_export_without_the_export_extra_exits_2_with_the_pip_line(
    ftc, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "x"
    result = ftc("export", run_dir, "--format", fmt, "--out", out, "--json")
    assert result.code == 2, result.err
    message = result.json()["message"]
    assert f"--format {fmt} needs the '{module}' package" in message
    assert message.endswith(EXPORT_LINE) and "internal error" not in result.err
    assert not out.exists()


def test_predict_an_onnx_dir_without_onnxruntime_exits_2(
    ftc, exports, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.txt").write_text("win money now\n")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = ftc("predict", exports["onnx"][1], tmp_path / "in.txt", "--json")
    assert result.code == 2, result.err
    assert result.json()["message"].endswith(EXPORT_LINE)
    assert not (tmp_path / "predictions.jsonl").exists()


def test_the_console_script_hides_no_traceback(run_dir: Path, tmp_path: Path) -> None:
    """The real entry point in a fresh process, onnx hidden by a sitecustomize shim."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['onnx'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(shim), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "fine_tune_cli", "export", str(run_dir), "--format", "onnx",
         "--out", str(tmp_path / "x")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --format onnx needs the 'onnx' package, which is not installed; install it"
        f" with: {EXPORT_LINE}"
    )
    assert "Traceback" not in done.stderr


def test_tensorboard_missing_exits_2_before_training(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    result = ftc("train", "demo", *TINY, "log.tensorboard=true", "--json")
    assert result.code == 2, result.err
    message = result.json()["message"]
    assert "log.tensorboard: true needs the 'tensorboard' package" in message
    assert message.endswith("pip install 'fine_tune_cli[tensorboard]'")
    assert not (isolated / "runs" / "demo").exists()  # nothing started


def test_tensorboard_installed_writes_events(ftc, isolated: Path) -> None:
    pytest.importorskip("tensorboard")
    result = ftc("train", "demo", *TINY, "train.max_steps=2", "log.tensorboard=true")
    assert result.code == 0, result.err
    assert list((isolated / "runs" / "demo" / "tensorboard").glob("events.out.tfevents.*"))


def test_every_import_is_stdlib_a_dependency_or_goes_through_require() -> None:
    """An `import x` of a package that a plain `pip install fine_tune_cli` does not bring
    (a runtime dependency or one of theirs) would be exit 1 ModuleNotFoundError for a user
    without it: such modules are imported with fine_tune_cli.optional.require (listed in
    its EXTRAS) instead."""
    from fine_tune_cli.optional import EXTRAS

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _closure({_dist_name(d) for d in project["dependencies"]})
    extras = {_dist_name(d) for reqs in project["optional-dependencies"].values() for d in reqs}
    assert {_dist_name(m) for m in EXTRAS} <= extras  # EXTRAS name real extras
    dists = packages_distributions()
    bad = []
    for path in sorted((REPO / "fine_tune_cli").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {  # imports under `if TYPE_CHECKING:` never run
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "fine_tune_cli":
                    continue
                if not {_dist_name(d) for d in dists.get(top, [top])} & declared:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert not bad, "use fine_tune_cli.optional.require for: " + "; ".join(bad)


def _closure(names: set[str]) -> set[str]:
    """The distributions installing `names` brings (requirements without an extra)."""
    from importlib.metadata import PackageNotFoundError, requires

    todo, seen = list(names), set(names)
    while todo:
        try:
            reqs = requires(todo.pop()) or []
        except PackageNotFoundError:
            continue
        for req in reqs:
            name = _dist_name(req)
            if "extra ==" not in req and name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def _dist_name(requirement: str) -> str:
    """'onnxruntime>=1.18' -> 'onnxruntime'; 'scikit_learn' -> 'scikit-learn'."""
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower().replace("_", "-")
