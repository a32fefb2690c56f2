"""On-disk format versions (fine_tune_cli/formats.py): run dirs and prepared-cache entries
written by older ftc (tests/fixtures/vN: v1 before `format_version` existed, v2 and v3 for
each version of recipe.lock.yaml since) still verify, evaluate, export and resume to the
weights of a fresh run; everything written now carries `format_version`; a file from a
newer ftc is refused with exit 2 naming both versions; every older version of every
format has a fixture.

A fixture is used from a copy in a temp dir, so its recorded absolute paths (the data
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

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "v1"
# The format versions in each fixture: what the ftc that made it wrote (fixtures/README.md).
OLD = {
    "v1": {"manifest": 1, "checkpoint": 1, "recipe_lock": 1, "prepared": 1},  # 3e0bf70
    "v2": {"manifest": 2, "checkpoint": 2, "recipe_lock": 2, "prepared": 2},  # ec3e9c0
    "v3": {"manifest": 2, "checkpoint": 2, "recipe_lock": 3, "prepared": 2},  # 374b456
}
ENTRY = "aa55e59a5c885d26"  # the fixture's prepared-cache entry (its data hash, 16 chars)
NEWER = "format_version 3 is newer than this ftc understands (2); upgrade fine_tune_cli"
# recipe.lock.yaml is ahead of the other formats (v3 train.batching, v4 optim.fused)
LOCK = CURRENT["recipe_lock"]
NEWER_LOCK = (
    f"format_version {LOCK + 1} is newer than this ftc understands ({LOCK}); upgrade fine_tune_cli"
)


def _copy(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of fixture `name`, its cache as the cache, on one thread (the fixture's run
    was made with OMP_NUM_THREADS=1, so a resume can be compared bitwise)."""
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    monkeypatch.setenv("FTC_CACHE_DIR", str(root / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(threads)


@pytest.fixture
def v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from _copy("v1", tmp_path, monkeypatch)


@pytest.fixture(params=sorted(OLD))
def old(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each fixture in turn (v1, v2, v3)."""
    yield from _copy(request.param, tmp_path, monkeypatch)


def checkpoints(run: Path) -> list[Path]:
    return sorted(p.parent for p in run.glob("checkpoints/step-*/COMPLETE"))


def resume_args(root: Path) -> list[str]:
    """Continue the fixture's run from its own (old) recipe lock; the data file moved."""
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


@pytest.mark.parametrize("name", sorted(OLD))
def test_each_fixture_holds_the_versions_it_stands_for(name: str):
    """Guards the fixtures: every file carries the version OLD says (none: v1)."""
    root = FIXTURES / name
    run, want = root / "run", OLD[name]

    def declared(data: dict) -> int:
        return data.get(KEY, 1)

    assert checkpoints(run)
    for folder in [run / "best", *checkpoints(run)]:
        assert declared(json.loads((folder / "manifest.json").read_text())) == want["manifest"]
    for lock in [run / "recipe.lock.yaml", *run.glob("checkpoints/*/recipe.lock.yaml")]:
        assert declared(yaml.safe_load(lock.read_text())) == want["recipe_lock"]
    for ckpt in checkpoints(run):
        state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
        assert declared(state) == want["checkpoint"]
    prepared = json.loads((root / "cache/prepared" / ENTRY / "manifest.json").read_text())
    assert declared(prepared) == want["prepared"]
    assert json.loads((run / "provenance.json").read_text())["status"] == "interrupted"


def test_every_older_format_version_has_a_fixture():
    """Bumping a format in formats.CURRENT needs a fixture of the version before it
    (tests/fixtures/make_run.sh NAME COMMIT at the last commit writing it; add it to OLD)."""
    for kind, current in CURRENT.items():
        held = {versions[kind] for versions in OLD.values()}
        missing = sorted(set(range(1, current)) - held)
        assert not missing, f"{kind}: no fixture of version(s) {missing}"


def test_old_run_verifies_evaluates_and_exports(old: Path, ftc):
    run = old / "run"
    untouched = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
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

    r = ftc("verify", run, "--json")  # best/, the old checkpoints and the new export
    assert r.code == 0, r.err
    assert r.json()["dirs"] == len(checkpoints(run)) + 2
    # Reading migrates in memory; the user's old files are left as they were.
    assert all(path.read_bytes() == data for path, data in untouched.items())


def test_old_run_resumes_to_the_same_weights_as_a_fresh_run(old: Path, tmp_path: Path, ftc):
    """Steps 1-4 or 5 by the old ftc, the rest by this one from the old checkpoint, equal
    bitwise a fresh run of this ftc: the whole old trainer state (optimizer, schedule, RNG,
    data position) was read back, and the old lock resolved to the recipe it ran with."""
    from safetensors.torch import load_file

    run = old / "run"
    last = checkpoints(run)[-1]
    r = ftc(*resume_args(old))
    assert r.code == 0, r.err
    resumed = r.json()
    assert resumed["status"] == "ok"
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["resumed_from"].endswith(last.name)
    assert provenance["data"]["path"] == str(old / "cache" / "prepared" / ENTRY)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 40

    # The fresh run trains on the fixture's own prepared entry: training a tokenizer is not
    # reproducible (the same data hash can hold other token ids), so a re-prepare would not
    # do. The old ftc stepped AdamW with foreach kernels; old locks migrate to that.
    fresh = tmp_path / "fresh"
    r = ftc("train", old / "recipe.yaml", "optim.fused=false", f"train.run_dir={fresh}", "--json")
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
    r = ftc("recipes", "validate", run / "recipe.lock.yaml", f"data.source.path={old}/data.jsonl")
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
