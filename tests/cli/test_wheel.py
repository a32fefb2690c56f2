"""A built wheel works outside this repo: build it, install it `--no-deps` into a fresh
virtualenv that borrows this venv's dependencies through a .pth file (pulling torch from
the index would fetch a multi-GB build), then from a temp dir run what a new user runs.

The .pth adds this venv's site-packages as a plain path, so its editable-install hook
(an `__editable__*.pth` in that folder) is not processed: the test asserts that
fine_tune_cli is imported from the new venv. The wheel is built from a copy of the
working tree, so the build never writes into the repo (build/, *.egg-info).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import fine_tune_cli
from tests.conftest import REPO

SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "LICENSE", "README.md")
TREES = ("fine_tune_cli", "recipes", "data")


def _run(args: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(REPO / name, src / name)
    for name in TREES:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
        tmp,
        env,
    )
    (wheel,) = dist.glob("fine_tune_cli-*.whl")
    return wheel


def test_wheel_installs_and_trains_from_any_directory(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        FTC_CACHE_DIR=str(tmp_path / "cache"),
        FTC_RUNS_DIR=str(tmp_path / "runs"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    wheel = _build_wheel(tmp_path, env)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"fine_tune_cli-{fine_tune_cli.__version__}.dist-info/METADATA")
    assert "fine_tune_cli/_bundled/recipes/_base/email-pipeline.yaml" in names
    assert "fine_tune_cli/_bundled/data/demo/spam_demo.jsonl.gz" in names
    assert f"fine_tune_cli-{fine_tune_cli.__version__}.dist-info/licenses/LICENSE" in names
    assert b"License-Expression: Apache-2.0" in metadata

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python]
    _run([*pip, "install", "--no-deps", "--no-index", wheel], tmp_path, env)
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env
    ).stdout.strip()
    (Path(purelib) / "_dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"  # not the repo
    work.mkdir()
    where = _run(
        [python, "-c", "import fine_tune_cli.recipe as r; print(r.__file__); print(r.RECIPES_DIR)"],
        work,
        env,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # not the editable checkout

    ftc = venv / "bin" / "ftc"
    assert _run([ftc, "--version"], work, env).stdout == (
        f"ftc (fine_tune_cli) {fine_tune_cli.__version__}\n"
    )
    listed = json.loads(_run([ftc, "recipes", "list", "--json"], work, env).stdout)["recipes"]
    assert sorted(r["name"] for r in listed) == sorted(p.stem for p in REPO.glob("recipes/*.yaml"))
    assert all(Path(r["path"]).is_relative_to(venv) for r in listed)

    _run([ftc, "recipes", "copy", "demo", "my.yaml"], work, env)
    data_path = Path(
        next(
            line for line in (work / "my.yaml").read_text().splitlines() if "spam_demo" in line
        ).split(": ", 1)[1]
    )
    assert data_path.is_relative_to(venv) and data_path.is_file()

    result = _run([ftc, "train", "my.yaml", "train.max_steps=5", "--json"], work, env)
    payload = json.loads(result.stdout)
    assert payload["status"] == "ok" and payload["steps"] == 5
    assert Path(payload["run_dir"]) == tmp_path / "runs" / "demo"
    assert (tmp_path / "runs" / "demo" / "best" / "model.safetensors").is_file()
    assert not any(venv.rglob("runs")), "a run landed inside the installed package"
