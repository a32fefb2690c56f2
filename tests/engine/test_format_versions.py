"""On-disk format versions (fine_tune_cli/formats.py): a run dir and prepared-cache entry
written by ftc before `format_version` existed (tests/fixtures/v1, made at commit 3e0bf70)
still verifies, evaluates, exports and resumes; everything written now carries
`format_version`; a file from a newer ftc is refused with exit 2 naming both versions.

The fixture is used from a copy in a temp dir, so its recorded absolute paths (the data
file, the prepared-cache entry) point nowhere: it also stands for a run dir and cache that
were moved to another place or machine.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from fine_tune_cli.formats import CURRENT, KEY

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1"
ENTRY = "aa55e59a5c885d26"  # the fixture's prepared-cache entry (its data hash, 16 chars)
NEWER = "format_version 3 is newer than this ftc understands (2); upgrade fine_tune_cli"
# recipe.lock.yaml is ahead of the other formats (v3 train.batching, v4 optim.fused)
LOCK = CURRENT["recipe_lock"]
NEWER_LOCK = (
    f"format_version {LOCK + 1} is newer than this ftc understands ({LOCK}); upgrade fine_tune_cli"
)


@pytest.fixture
def v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the v1 fixture, its cache as the cache, on one thread (the fixture's run
    was made with OMP_NUM_THREADS=1, so a resume can be compared bitwise)."""
    root = tmp_path / "v1"
    shutil.copytree(FIXTURE, root)
    monkeypatch.setenv("FTC_CACHE_DIR", str(root / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(threads)


def resume_args(root: Path) -> list[str]:
    """Continue the fixture's run from its own (v1) recipe lock; the data file moved."""
    return [
        "train",
        root / "run" / "recipe.lock.yaml",
        f"train.run_dir={root / 'run'}",
        f"data.source.path={root / 'data.jsonl'}",
        "--resume",
        "auto",
        "--json",
    ]


def bump(data: dict, version: int = 3) -> dict:
    return {KEY: version, **{k: v for k, v in data.items() if k != KEY}}


def test_the_fixture_is_version_1_everywhere():
    """Guards the fixture itself: no file in it may carry format_version (it stands for
    what users have on disk from before versions existed)."""
    run = FIXTURE / "run"
    manifests = [run / "best", *sorted((run / "checkpoints").glob("step-*"))]
    assert len(manifests) == 3
    for folder in manifests:
        assert KEY not in json.loads((folder / "manifest.json").read_text())
    for lock in [run / "recipe.lock.yaml", *run.glob("checkpoints/*/recipe.lock.yaml")]:
        assert KEY not in yaml.safe_load(lock.read_text())
    state = torch.load(run / "checkpoints/step-000005/trainer_state.pt", weights_only=True)
    assert KEY not in state and state["trainer"]["step"] == 5
    prepared = json.loads((FIXTURE / "cache/prepared" / ENTRY / "manifest.json").read_text())
    assert KEY not in prepared and prepared["format"] == 1
    assert json.loads((run / "provenance.json").read_text())["status"] == "interrupted"


def test_v1_run_verifies_evaluates_and_exports(v1: Path, ftc):
    run = v1 / "run"
    assert ftc("verify", run).code == 0

    r = ftc("eval", run, "--json")
    assert r.code == 0, r.err
    payload = r.json()
    assert payload["split"] == "test" and payload["metrics"]["num_examples"] == 32
    assert (run / "eval" / "test" / "metrics.json").is_file()

    r = ftc("export", run, "--format", "hf", "--json")
    assert r.code == 0, r.err
    exported = json.loads((run / "export" / "hf" / "manifest.json").read_text())
    assert exported[KEY] == CURRENT["manifest"] and exported["parity"]["passed"]

    r = ftc("verify", run, "--json")  # best/, both v1 checkpoints and the new export
    assert r.code == 0, r.err
    assert r.json()["dirs"] == 4
    # Reading migrates in memory; the user's v1 files are left as they were.
    assert KEY not in json.loads((run / "best" / "manifest.json").read_text())
    assert KEY not in yaml.safe_load((run / "recipe.lock.yaml").read_text())


def test_v1_run_resumes_to_the_same_weights_as_a_fresh_run(v1: Path, tmp_path: Path, ftc):
    """Steps 1-5 by the old ftc, 6-40 by this one from the v1 checkpoint, equal bitwise a
    fresh run of this ftc: the whole v1 trainer state (optimizer, schedule, RNG, data
    position) was read back."""
    from safetensors.torch import load_file

    run = v1 / "run"
    r = ftc(*resume_args(v1))
    assert r.code == 0, r.err
    resumed = r.json()
    assert resumed["status"] == "ok"
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["resumed_from"].endswith("step-000005")
    assert provenance["data"]["path"] == str(v1 / "cache" / "prepared" / ENTRY)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 40

    fresh = tmp_path / "fresh"
    # the v1 ftc stepped AdamW with foreach kernels; its lock migrates to optim.fused=false
    r = ftc("train", v1 / "recipe.yaml", "optim.fused=false", f"train.run_dir={fresh}", "--json")
    assert r.code == 0, r.err
    same = ("best_step", "loss", "accuracy", "f1_macro")
    assert {k: r.json()["metrics"][k] for k in same} == {k: resumed["metrics"][k] for k in same}
    final = "checkpoints/step-000040/model.safetensors"
    a, b = load_file(str(run / final)), load_file(str(fresh / final))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Everything this ftc wrote carries the current format_version ...
    ckpt = run / "checkpoints" / "step-000040"
    assert json.loads((ckpt / "manifest.json").read_text())[KEY] == CURRENT["manifest"]
    assert json.loads((run / "best" / "manifest.json").read_text())[KEY] == CURRENT["manifest"]
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert state[KEY] == CURRENT["checkpoint"]
    for lock in (run / "recipe.lock.yaml", ckpt / "recipe.lock.yaml"):
        assert lock.read_text().startswith(f"{KEY}: {CURRENT['recipe_lock']}\n")
    # ... and the new lock is still a recipe `ftc train` / `recipes validate` take.
    r = ftc("recipes", "validate", run / "recipe.lock.yaml", f"data.source.path={v1}/data.jsonl")
    assert r.code == 0, r.err + r.out
    assert ftc("verify", run).code == 0


def test_prepare_writes_a_versioned_manifest_under_the_v1_hash(
    v1: Path, tmp_path, ftc, monkeypatch
):
    """The data hash did not change with the format (else every old checkpoint's data
    hash would differ and resume would be refused): the same recipe prepared by this ftc
    lands in the fixture's entry name, now with format_version."""
    monkeypatch.setenv("FTC_CACHE_DIR", str(tmp_path / "cold"))
    r = ftc("prepare", v1 / "recipe.yaml", "--json")
    assert r.code == 0, r.err
    manifest = json.loads((tmp_path / "cold/prepared" / ENTRY / "manifest.json").read_text())
    assert manifest[KEY] == CURRENT["prepared"] and "format" not in manifest


def _newer_manifest(root: Path) -> tuple[Path, list[str]]:
    path = root / "run" / "best" / "manifest.json"
    path.write_text(json.dumps(bump(json.loads(path.read_text()))))
    return path, ["eval", root / "run", "--json"]


def _newer_checkpoint(root: Path) -> tuple[Path, list[str]]:
    from fine_tune_cli.manifest import write_manifest

    ckpt = root / "run" / "checkpoints" / "step-000005"
    path = ckpt / "trainer_state.pt"
    torch.save(bump(torch.load(path, weights_only=True)), path)
    write_manifest(ckpt, step=5)  # as the newer ftc would have: the sha256 still matches
    return path, resume_args(root)


def _newer_lock(root: Path) -> tuple[Path, list[str]]:
    path = root / "run" / "recipe.lock.yaml"
    path.write_text(f"{KEY}: {LOCK + 1}\n" + path.read_text())
    return path, ["eval", root / "run", "--json"]


def _newer_lock_as_recipe(root: Path) -> tuple[Path, list[str]]:
    path, _ = _newer_lock(root)
    return path, ["train", path, "--json"]


def _newer_prepared(root: Path) -> tuple[Path, list[str]]:
    path = root / "cache" / "prepared" / ENTRY / "manifest.json"
    path.write_text(json.dumps(bump(json.loads(path.read_text()))))
    return path, ["eval", root / "run", "--json"]


@pytest.mark.parametrize(
    "make_newer",
    [_newer_manifest, _newer_checkpoint, _newer_lock, _newer_lock_as_recipe, _newer_prepared],
    ids=["manifest", "checkpoint", "recipe-lock", "recipe-lock-as-recipe", "prepared"],
)
def test_a_newer_format_is_refused_naming_both_versions(v1: Path, make_newer, ftc):
    path, args = make_newer(v1)
    before = sorted(p.relative_to(v1) for p in v1.rglob("*"))
    r = ftc(*args)
    assert r.code == 2, r.err
    payload = r.json()
    assert payload["status"] == "error" and payload["exit_code"] == 2
    newer = NEWER_LOCK if path.name == "recipe.lock.yaml" else NEWER
    assert payload["message"] == f"{path}: {newer}"
    assert "Traceback" not in r.err
    assert sorted(p.relative_to(v1) for p in v1.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("value", ["two", 0, -1, 1.5, True])
def test_a_format_version_that_is_not_a_version_is_exit_2(value, tmp_path: Path, ftc):
    lock = tmp_path / "recipe.lock.yaml"
    tree = yaml.safe_load((FIXTURE / "run" / "recipe.lock.yaml").read_text())
    lock.write_text(yaml.safe_dump({KEY: value, **tree}, sort_keys=False))
    r = ftc("recipes", "validate", lock, "--json")
    assert r.code == 2
    assert r.json()["message"] == f"{lock}: {KEY} {value!r} is not a positive integer"


def test_every_older_version_has_a_migration():
    """A bumped version without its migration step would be a KeyError on every old file."""
    from fine_tune_cli.formats import MIGRATIONS, upgrade

    for kind, current in CURRENT.items():
        assert sorted(MIGRATIONS[kind]) == list(range(1, current)), kind
        assert upgrade(kind, {"x": 1}, "f") == {"x": 1, KEY: current}
        assert upgrade(kind, {KEY: current, "x": 1}, "f") == {KEY: current, "x": 1}
