"""End to end through the real CLI: prepare, train, eval, export and verify on the bundled
demo data with a tiny BERT, asserting exit codes *and* the files and metrics written.

One run is trained per module and shared; tests that change a run work on a copy."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_DATA, REPO, TINY, Result, cli_env, run_cli

# A seed no other test uses, so the session cache cannot already hold this prepared data.
FRESH_SEED = "data.split.seed=9173"
SENTENCE = "Congratulations! You have won a free cruise, click here to claim your prize now."


# --------------------------------------------------------------------------- helpers


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a trained run without what eval/export added to the shared one."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval", "export"))
    return dest


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def demo_rows(n_per_label: int) -> list[dict[str, Any]]:
    """A few rows of the bundled demo data, both labels."""
    picked: dict[str, list[dict[str, Any]]] = {"spam": [], "ham": []}
    with gzip.open(DEMO_DATA, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            bucket = picked[row["label"]]
            if len(bucket) < n_per_label:
                bucket.append(row)
            if all(len(b) == n_per_label for b in picked.values()):
                break
    return picked["spam"] + picked["ham"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def logits(model_dir: Path, tokenizer_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.inference_mode():
        return model(**tokenizer(SENTENCE, return_tensors="pt", truncation=True)).logits


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Result, Path]:
    """`ftc train demo *TINY --json` once, into <tmp>/runs/demo (the default run dir)."""
    base = tmp_path_factory.mktemp("trained")
    with cli_env(cache_dir, base):
        result = run_cli("train", "demo", *TINY, "--json")
    assert result.code == 0, result.err
    return result, base / "runs" / "demo"


@pytest.fixture(scope="module")
def run_dir(trained: tuple[Result, Path]) -> Path:
    return trained[1]


@pytest.fixture(scope="module")
def exported(
    run_dir: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[Result, Path]:
    """A copy of the trained run, exported once with the default --format and --out."""
    base = tmp_path_factory.mktemp("exported")
    run = copy_run(run_dir, base / "demo")
    with cli_env(cache_dir, base):
        result = run_cli("export", run, "--json")
    assert result.code == 0, result.err
    return result, run


# --------------------------------------------------------------------------- prepare
def test_prepare_builds_then_hits_the_cache(ftc) -> None:
    first = ftc("prepare", "demo", *TINY, FRESH_SEED, "--json")
    assert first.code == 0, first.err
    p = first.json()
    assert p["status"] == "ok" and p["command"] == "prepare" and p["exit_code"] == 0
    assert p["cache_hit"] is False
    records = p["pipeline"][-1]["out"]
    assert sum(p["splits"].values()) == records
    assert 0.9 * 300 <= records <= 300
    assert set(p["splits"]) >= {"train", "validation", "test"}
    assert sorted(p["labels"]) == ["ham", "spam"]
    prepared = Path(p["outputs"]["prepared"])
    assert prepared.is_dir()
    for name in ("manifest.json", "COMPLETE", "train/input_ids.npy"):
        assert (prepared / name).is_file(), name
    assert (prepared / "tokenizer").is_dir() and any((prepared / "tokenizer").iterdir())

    again = ftc("prepare", "demo", *TINY, FRESH_SEED, "--json")
    assert again.code == 0, again.err
    q = again.json()
    assert q["cache_hit"] is True
    assert q["hash"] == p["hash"] and q["outputs"]["prepared"] == p["outputs"]["prepared"]
    assert q["splits"] == p["splits"]

    human = ftc("prepare", "demo", *TINY, FRESH_SEED)
    assert human.code == 0, human.err
    assert "cache hit" in human.out

    forced = ftc("prepare", "demo", *TINY, FRESH_SEED, "--force", "--json")
    assert forced.code == 0, forced.err
    f = forced.json()
    assert f["cache_hit"] is False
    assert f["hash"] == p["hash"] and f["splits"] == p["splits"]
    assert (Path(f["outputs"]["prepared"]) / "COMPLETE").is_file()


# --------------------------------------------------------------------------- train
def test_train_reports_and_writes_the_run_dir(trained: tuple[Result, Path]) -> None:
    result, run = trained
    p = result.json()
    assert p["status"] == "ok" and p["command"] == "train" and p["exit_code"] == 0
    assert p["run_dir"] == "runs/demo"
    for name in ("accuracy", "f1_macro", "loss"):
        assert isinstance(p["metrics"][name], float), name
    assert 0.0 <= p["metrics"]["accuracy"] <= 1.0
    assert p["best_step"] in (6, 12)

    for name in ("recipe.lock.yaml", "provenance.json", "metrics.jsonl", "train.log"):
        assert (run / name).is_file(), name
    assert not (run / ".lock").exists()

    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "complete"
    assert len(prov["data"]["hash"]) == 64
    import torch

    assert prov["environment"]["torch"] == torch.__version__

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if "split" not in r]
    eval_lines = [r for r in records if r.get("split") == "validation"]
    assert train_lines and eval_lines
    for r in train_lines:
        for key in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"):
            assert key in r, (key, r)
    assert [r["step"] for r in eval_lines] == [6, 12]
    assert all("eval_accuracy" in r for r in eval_lines)
    assert eval_lines[-1]["eval_accuracy"] == pytest.approx(p["metrics"]["accuracy"])

    ckpt = run / "checkpoints" / "step-000012"
    for name in ("model.safetensors", "trainer_state.pt", "manifest.json", "COMPLETE"):
        assert (ckpt / name).is_file(), name
    best = run / "best"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "manifest.json"):
        assert (best / name).is_file(), name
    assert (best / "tokenizer_config.json").is_file()


def test_train_json_metrics_carry_best_step(trained: tuple[Result, Path]) -> None:
    """CONTRACT: for train, `metrics` is the last validation evaluation plus "best_step"."""
    p = trained[0].json()
    assert p["metrics"].get("best_step") == p["best_step"], p["metrics"]


def test_train_into_complete_run_is_refused_then_overwritten(
    ftc, run_dir: Path, tmp_path: Path
) -> None:
    run = copy_run(run_dir, tmp_path / "again")
    refused = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--json")
    assert refused.code == 7, refused.err
    e = refused.json()
    assert e["status"] == "error" and e["exit_code"] == 7
    assert "--overwrite" in e["message"]
    assert not (run / ".lock").exists()

    ok = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--overwrite", "--json")
    assert ok.code == 0, ok.err
    assert ok.json()["status"] == "ok"
    assert json.loads((run / "provenance.json").read_text())["status"] == "complete"
    assert (run / "checkpoints" / "step-000012" / "COMPLETE").is_file()
    assert (run / "best" / "model.safetensors").is_file()
    assert not (run / ".lock").exists()


def test_refused_train_leaves_the_complete_run_untouched(
    ftc, run_dir: Path, tmp_path: Path
) -> None:
    """A refusal (exit 7) must not rewrite the run it refused to touch."""
    run = copy_run(run_dir, tmp_path / "kept")
    before = (run / "provenance.json").read_text()
    refused = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--json")
    assert refused.code == 7, refused.err
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["status"] == "complete", prov.get("error")
    assert (run / "provenance.json").read_text() == before
    # ... so a second attempt still calls it complete, not "unfinished".
    second = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--json")
    assert second.code == 7
    assert "complete run" in second.json()["message"]


def test_train_takes_over_a_stale_lock(ftc, tmp_path: Path) -> None:
    """A lock file whose writer is gone holds no kernel lock (tests/cli/test_locks.py has
    the live holder)."""
    run = tmp_path / "stale"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    result = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--json")
    assert result.code == 0, result.err
    assert result.json()["status"] == "ok"
    assert json.loads((run / "provenance.json").read_text())["status"] == "complete"
    assert (run / "best" / "model.safetensors").is_file()
    assert not (run / ".lock").exists()


def test_train_dry_run_checks_without_creating_a_run(ftc, tmp_path: Path) -> None:
    result = ftc("train", "demo", *TINY, "--dry-run", "--json")
    assert result.code == 0, result.err
    p = result.json()
    assert p["status"] == "ok" and p["command"] == "train"
    assert isinstance(p["checks"], list) and p["checks"]
    assert all(c["ok"] for c in p["checks"])
    assert {"recipe", "data", "model", "run dir"} <= {c["check"] for c in p["checks"]}
    assert p["parameters"] > 0
    assert not (tmp_path / "runs").exists()


def test_train_with_missing_data_file_exits_3(ftc, tmp_path: Path) -> None:
    recipe = tmp_path / "missing.yaml"
    recipe.write_text(
        f"extends: {REPO / 'recipes' / 'demo.yaml'}\n"
        "name: missing-data\n"
        "data:\n  source:\n    path: no-such-file.jsonl.gz\n"
    )
    result = ftc("train", recipe, *TINY, "--json")
    assert result.code == 3, result.err
    e = result.json()
    assert e["status"] == "error" and e["exit_code"] == 3
    assert "no-such-file.jsonl.gz" in e["message"]
    run = tmp_path / "runs" / "missing-data"
    if run.exists():  # the lock may have created it; nothing in it may look complete
        prov_file = run / "provenance.json"
        prov = json.loads(prov_file.read_text()) if prov_file.is_file() else {}
        assert prov.get("status") != "complete"
        assert not list(run.rglob("COMPLETE"))
        assert not (run / "best").exists()
        assert not (run / ".lock").exists()


# --------------------------------------------------------------------------- eval
def test_eval_default_split_writes_report(ftc, run_dir: Path) -> None:
    result = ftc("eval", run_dir, "--json")
    assert result.code == 0, result.err
    p = result.json()
    assert p["status"] == "ok" and p["command"] == "eval" and p["split"] == "test"
    assert p["run_dir"] == str(run_dir)
    for name in ("accuracy", "f1_macro", "loss", "precision_macro", "recall_macro"):
        assert isinstance(p["metrics"][name], float), name
    out = run_dir / "eval" / "test"
    for name in ("metrics.json", "report.md", "report.html", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert "confusion_matrix" in saved
    assert Path(p["outputs"]["metrics"]) == out / "metrics.json"


def test_eval_validation_split(ftc, run_dir: Path) -> None:
    result = ftc("eval", run_dir, "--split", "validation", "--json")
    assert result.code == 0, result.err
    p = result.json()
    assert p["split"] == "validation"
    assert (run_dir / "eval" / "validation" / "metrics.json").is_file()
    # the best model's validation accuracy is what training logged for the best step
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = json.loads((run_dir / "provenance.json").read_text())["summary"]["best_step"]
    logged = next(r for r in records if r.get("split") == "validation" and r["step"] == best)
    assert p["metrics"]["accuracy"] == pytest.approx(logged["eval_accuracy"])


def test_eval_fail_under_gates(ftc, run_dir: Path) -> None:
    failed = ftc("eval", run_dir, "--fail-under", "accuracy=1.01", "--json")
    assert failed.code == 5, failed.err
    e = failed.json()
    assert e["status"] == "gate_failed" and e["exit_code"] == 5
    assert "accuracy" in e["message"]
    assert isinstance(e["metrics"]["accuracy"], float)
    assert (run_dir / "eval" / "test" / "metrics.json").is_file()

    passed = ftc("eval", run_dir, "--fail-under", "accuracy=0.0", "--json")
    assert passed.code == 0, passed.err
    assert passed.json()["status"] == "ok"


def test_eval_new_data_file(ftc, run_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "fresh.jsonl", demo_rows(3))
    result = ftc("eval", run_dir, "--data", data, "--json")
    assert result.code == 0, result.err
    p = result.json()
    assert p["split"] == "fresh"
    assert p["metrics"]["num_examples"] == 6
    assert 0.0 <= p["metrics"]["accuracy"] <= 1.0
    assert (run_dir / "eval" / "fresh" / "metrics.json").is_file()
    assert (run_dir / "eval" / "fresh" / "report.md").is_file()


def test_eval_data_file_with_unknown_label_exits_3(ftc, run_dir: Path, tmp_path: Path) -> None:
    rows = demo_rows(1)
    rows[0]["label"] = "phishing"
    data = write_jsonl(tmp_path / "odd.jsonl", rows)
    result = ftc("eval", run_dir, "--data", data, "--json")
    assert result.code == 3, result.err
    e = result.json()
    assert e["status"] == "error" and "phishing" in e["message"]
    assert not (run_dir / "eval" / "odd").exists()


def test_eval_missing_run_dir_exits_2(ftc, tmp_path: Path) -> None:
    result = ftc("eval", tmp_path / "runs" / "nope", "--json")
    assert result.code == 2, result.err
    assert result.json()["status"] == "error"


def test_eval_compare(ftc, run_dir: Path, tmp_path: Path) -> None:
    other = copy_run(run_dir, tmp_path / "other")
    result = ftc("eval", run_dir, "--compare", other, "--json")
    assert result.code == 0, result.err
    p = result.json()
    block = p["compare"]
    assert block["run_dir"] == str(other)
    assert "accuracy" in block["metrics"] and "accuracy" in block["delta"]
    for key, delta in block["delta"].items():
        assert delta == pytest.approx(p["metrics"][key] - block["metrics"][key]), key
        assert delta == pytest.approx(0.0, abs=1e-6), key  # the same model


def test_eval_refuses_tampered_weights(ftc, run_dir: Path, tmp_path: Path) -> None:
    run = copy_run(run_dir, tmp_path / "tampered")
    flip_byte(run / "best" / "model.safetensors")
    result = ftc("eval", run, "--json")
    assert result.code == 6, result.err
    e = result.json()
    assert e["status"] == "error" and "model.safetensors" in e["message"]
    assert not (run / "eval" / "test").exists()


# --------------------------------------------------------------------------- export
def test_export_writes_manifest_with_parity(exported: tuple[Result, Path]) -> None:
    result, run = exported
    p = result.json()
    assert p["status"] == "ok" and p["command"] == "export" and p["format"] == "hf"
    out = run / "export" / "hf"
    assert Path(p["outputs"]["dir"]) == out
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    for rel, entry in manifest["files"].items():
        assert len(entry["sha256"]) == 64 and (out / rel).is_file(), rel
    assert manifest["parity"]["passed"] is True
    assert manifest["parity"]["max_abs_diff"] <= 1e-3
    assert p["parity"]["passed"] is True and p["parity"]["samples"] > 0
    assert not list(out.parent.glob(".tmp-*"))


def test_exported_model_loads_with_transformers(exported: tuple[Result, Path]) -> None:
    import torch

    _, run = exported
    out = run / "export" / "hf"
    got = logits(out, out)
    ref = logits(run / "best", run / "best")
    assert got.shape == (1, 2)
    assert torch.allclose(got, ref, atol=1e-5)


def test_export_conflicts_and_overrides(ftc, exported: tuple[Result, Path], tmp_path: Path) -> None:
    _, run = exported
    out = run / "export" / "hf"
    before = (out / "manifest.json").read_text()

    again = ftc("export", run, "--json")
    assert again.code == 7, again.err
    assert "--overwrite" in again.json()["message"]
    assert (out / "manifest.json").read_text() == before

    other = tmp_path / "other_dir"
    moved = ftc("export", run, "--out", other, "--json")
    assert moved.code == 0, moved.err
    assert Path(moved.json()["outputs"]["dir"]) == other
    assert (other / "manifest.json").is_file() and (other / "model.safetensors").is_file()

    bad_tol = ftc("export", run, "export.max_abs_diff=-1", "--out", tmp_path / "x1", "--json")
    assert bad_tol.code == 2, bad_tol.err
    assert "max_abs_diff" in bad_tol.json()["message"]
    assert not (tmp_path / "x1").exists()

    bad_key = ftc("export", run, "optim.lr=1", "--out", tmp_path / "x2", "--json")
    assert bad_key.code == 2, bad_key.err
    assert "optim.lr" in bad_key.json()["message"]
    assert not (tmp_path / "x2").exists()


# --------------------------------------------------------------------------- verify
def test_verify_export_and_detect_tampering(
    ftc, exported: tuple[Result, Path], tmp_path: Path
) -> None:
    _, run = exported
    ok = ftc("verify", run / "export" / "hf", "--json")
    assert ok.code == 0, ok.err
    assert ok.json()["status"] == "ok"

    copy = shutil.copytree(run / "export" / "hf", tmp_path / "hf")
    flip_byte(copy / "model.safetensors")
    bad = ftc("verify", copy, "--json")
    assert bad.code == 6, bad.err
    e = bad.json()
    assert e["status"] == "error" and e["exit_code"] == 6
    assert "model.safetensors" in e["message"]


def test_verify_run_dir_checks_best_checkpoints_and_exports(
    ftc, exported: tuple[Result, Path], tmp_path: Path
) -> None:
    run = shutil.copytree(exported[1], tmp_path / "run")
    ok = ftc("verify", run, "--json")
    assert ok.code == 0, ok.err
    p = ok.json()
    verified = {Path(d).relative_to(run).as_posix() for d in p["verified"]}
    assert {"best", "checkpoints/step-000012", "export/hf"} <= verified
    assert p["dirs"] == len(verified) and p["files"] > 3 * p["dirs"]

    ckpt = run / "checkpoints" / "step-000012"
    flip_byte(ckpt / "model.safetensors")
    bad = ftc("verify", run, "--json")
    assert bad.code == 6, bad.err
    assert "step-000012/model.safetensors" in bad.json()["message"]

    empty = tmp_path / "empty-run"
    empty.mkdir()
    shutil.copy(run / "recipe.lock.yaml", empty)
    nothing = ftc("verify", empty, "--json")
    assert nothing.code == 6 and "nothing" not in nothing.err
    assert "holds no best/" in nothing.json()["message"]


def test_eval_of_a_model_dir_writes_beside_it_not_into_it(
    ftc, run_dir: Path, tmp_path: Path
) -> None:
    """A stand-alone best/ copy keeps its manifest valid after eval."""
    model = shutil.copytree(run_dir / "best", tmp_path / "model")
    result = ftc("eval", model, "--split", "validation", "--json")
    assert result.code == 0, result.err
    assert (tmp_path / "model.eval" / "validation" / "metrics.json").is_file()
    assert ftc("verify", model).code == 0
    again = ftc("eval", model, "--split", "validation", "--json")  # still loads
    assert again.code == 0, again.err


# --------------------------------------------------------------------------- runs list
def test_runs_list_reports_complete_stopped_and_foreign_dirs(
    ftc, run_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "many"
    root.mkdir()
    copy_run(run_dir, root / "done")
    # A run killed mid-way: provenance still says running, its lock owner is dead.
    killed = copy_run(run_dir, root / "killed")
    prov = json.loads((killed / "provenance.json").read_text())
    prov.update(status="running", started="2099-01-01T00:00:00Z")
    prov.pop("summary", None)
    (killed / "provenance.json").write_text(json.dumps(prov))
    (killed / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    (root / "notes").mkdir()  # not a run dir: skipped

    result = ftc("runs", "list", root, "--json")
    assert result.code == 0, result.err
    rows = {r["name"]: r for r in result.json()["runs"]}
    assert set(rows) == {"done", "killed"}
    assert [r["name"] for r in result.json()["runs"]] == ["killed", "done"]  # newest first
    done, stopped = rows["done"], rows["killed"]
    assert done["status"] == "complete" and not done["resumable"]
    assert (done["family"], done["task"]) == ("bert", "classification")
    assert done["step"] == 12 and done["best_metric"] == "f1_macro"
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    at_best = [r for r in history if r.get("step") == done["best_step"] and "eval_f1_macro" in r]
    assert done["best_value"] == pytest.approx(at_best[-1]["eval_f1_macro"])
    assert stopped["status"] == "stopped" and stopped["resumable"] is True
    assert stopped["checkpoints"] >= 1

    human = ftc("runs", "list", root)
    assert human.code == 0, human.err
    assert "stopped (resumable)" in human.out and "bert/classification" in human.out

    empty = ftc("runs", "list", tmp_path / "nothing-here", "--json")
    assert empty.code == 2 and "no such directory" in empty.json()["message"]
    (tmp_path / "blank").mkdir()
    blank = ftc("runs", "list", tmp_path / "blank")
    assert blank.code == 0 and "no runs in" in blank.out
