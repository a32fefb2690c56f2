"""Experiment trackers (`log.trackers`): each step shown exactly once after a SIGKILL and
a resume (TensorBoard event files, MLflow metric history), MLflow holding the params, best/
and the eval report; W&B offline with its files inside the run dir; a tracker that is not
installed is exit 2 with the pip line; a tracker failing at run time is one warning and
training goes on."""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY, ftc_subprocess

pytest.importorskip("tensorboard")
OVERRIDDEN = ("train.max_steps", "train.batch_size", "train.eval_every")
STEPS = 12
ARGS = [
    *(o for o in TINY if not o.startswith(OVERRIDDEN)),
    f"train.max_steps={STEPS}",
    "train.batch_size=8",
    "train.eval_every=6",
    "train.save_every=3",
    "train.device=cpu",
    "log.every=1",
]
EVALS = [6, 12]


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if "loss" in record:
            steps.append(record["step"])
    return steps


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name[5:]) for p in run_dir.glob("checkpoints/step-*/COMPLETE"))


def kill_after_a_checkpoint(run_dir: Path, args: list[str]) -> int:
    """Start `ftc train` in a process; SIGKILL it once a checkpoint is complete and a step
    past it is logged (points no tracker may show yet). Returns that checkpoint's step."""
    proc = ftc_subprocess("train", "demo", *args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended (exit {proc.returncode}) too early:\n{proc.communicate()[1]}")
        done = checkpoints(run_dir)
        if done and max(logged_steps(run_dir), default=0) > done[-1]:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGKILL
            return checkpoints(run_dir)[-1]
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no checkpoint within 240 s")


def tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_sigkill_and_resume_show_each_step_once_in_tensorboard_and_mlflow(
    ftc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: fast, no DB migration
    run_dir = tmp_path / "run"
    args = [*ARGS, f"train.run_dir={run_dir}", "log.trackers=[tensorboard,mlflow]"]
    from mlflow.tracking import MlflowClient

    ckpt = kill_after_a_checkpoint(run_dir, args)
    killed_at = max(logged_steps(run_dir))
    assert ckpt < killed_at < STEPS, "the kill came too late to test anything"
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient()
    # Only what the checkpoint covers reached the trackers; the rest is redone on resume.
    shown = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert shown == list(range(1, ckpt + 1))
    assert tensorboard_steps(run_dir, "train/loss") == list(range(1, ckpt + 1))

    result = ftc("train", "demo", *args, "--resume", "auto", "--json")
    assert result.code == 0, result.err
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run_id
    for tag, want in (("train/loss", list(range(1, STEPS + 1))), ("eval/accuracy", EVALS)):
        assert tensorboard_steps(run_dir, tag) == want, tag
        assert sorted(m.step for m in client.get_metric_history(run_id, tag)) == want, tag
    assert logged_steps(run_dir) == list(range(1, STEPS + 1))  # metrics.jsonl agrees
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.info.status == "FINISHED"
    params = mlflow_run.data.params
    assert params["train.max_steps"] == str(STEPS) and params["log.trackers"] == (
        '["tensorboard", "mlflow"]'
    )
    assert params["optim.lr"] == str(result_recipe(run_dir)["optim"]["lr"])
    assert {a.path for a in client.list_artifacts(run_id)} >= {"recipe.lock.yaml", "best"}
    assert "best/model.safetensors" in {a.path for a in client.list_artifacts(run_id, "best")}

    # `ftc eval` adds its figures and report to the same MLflow run.
    evaluated = ftc("eval", run_dir, "--json")
    assert evaluated.code == 0, evaluated.err
    split = evaluated.json()["split"]
    report = {a.path for a in client.list_artifacts(run_id, f"eval/{split}")}
    assert {f"eval/{split}/report.html", f"eval/{split}/metrics.json"} <= report
    accuracy = client.get_metric_history(run_id, f"{split}/accuracy")
    assert [m.value for m in accuracy] == [pytest.approx(evaluated.json()["metrics"]["accuracy"])]
    assert client.get_run(run_id).info.status == "FINISHED"


def result_recipe(run_dir: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run_dir / "recipe.lock.yaml").read_text())


def wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file (`run-<id>.wandb`: a LevelDB-style log of
    protobuf records, 32 KiB blocks, 7-byte record headers, after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, out = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def test_wandb_offline_keeps_its_files_in_the_run_dir(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    result = ftc("train", "demo", *TINY, "train.max_steps=4", "train.eval_every=2",
                 "log.every=1", "log.trackers=wandb", "--json")  # fmt: skip
    assert result.code == 0, result.err
    run_dir = isolated / "runs" / "demo"
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    (offline,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    assert not (isolated / "wandb").exists()  # nothing outside the run dir
    history: dict[int, set[str]] = {}
    config = {}
    for record in wandb_records(offline / f"run-{run_id}.wandb"):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            history.setdefault(int(items["_step"]), set()).update(items)
        elif kind == "run":
            config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
        elif kind == "config":
            config |= {u.key: json.loads(u.value_json) for u in record.config.update}
    assert sorted(history) == [1, 2, 3, 4]
    assert all("train/loss" in keys for keys in history.values())
    assert {"eval/accuracy" in history[s] for s in (2, 4)} == {True}
    assert config["train.max_steps"] == 4 and config["log.trackers"] == '["wandb"]'
    files = offline / "files"
    assert (files / "best" / "model.safetensors").exists() and (files / "recipe.lock.yaml").exists()


def test_the_default_is_tensorboard_when_installed_and_the_lock_records_it(
    ftc, isolated: Path
) -> None:
    result = ftc("train", "demo", *TINY, "train.max_steps=2")
    assert result.code == 0, result.err
    run_dir = isolated / "runs" / "demo"
    assert result_recipe(run_dir)["log"]["trackers"] == ["tensorboard"]
    assert tensorboard_steps(run_dir, "train/loss") == [1]  # log.every=10 logs step 1


def test_tracker_keys_resolve_old_recipes_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """log.tensorboard (deprecated) keeps its meaning; a lock of an older ftc says
    `tensorboard: false` and reruns without trackers; no tensorboard installed, the
    default is none (never an error)."""
    from fine_tune_cli.errors import RecipeError
    from fine_tune_cli.recipe import validate_tree
    from fine_tune_cli.recipe.schema import LogSpec

    assert LogSpec().resolved_trackers() == ("tensorboard",)
    assert LogSpec(tensorboard=True).resolved_trackers() == ("tensorboard",)
    assert LogSpec(tensorboard=False).resolved_trackers() == ()
    assert LogSpec(tensorboard=True, trackers=["mlflow"]).resolved_trackers() == (
        "tensorboard",
        "mlflow",
    )
    assert LogSpec(trackers="wandb").resolved_trackers() == ("wandb",)  # log.trackers=wandb
    assert LogSpec(trackers=[]).resolved_trackers() == ()
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert LogSpec().resolved_trackers() == ()
    base = {"name": "x", "model": {"family": "bert"}, "data": {"source": {"path": "d.jsonl"}}}
    for bad in ({"trackers": ["neptune"]}, {"trackers": ["mlflow", "mlflow"]},
                {"trackers": ["tensorboard"], "tensorboard": False}):  # fmt: skip
        with pytest.raises(RecipeError):
            validate_tree({**base, "log": bad})


@pytest.mark.parametrize(
    ("tracker", "dry_run"), [("mlflow", False), ("wandb", False), ("mlflow", True)]
)
def test_a_tracker_not_installed_exits_2_with_the_pip_line(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch, tracker: str, dry_run: bool
) -> None:
    monkeypatch.setitem(sys.modules, tracker, None)  # import fails as if not installed
    result = ftc("train", "demo", *TINY, f"log.trackers=[tensorboard,{tracker}]", "--json",
                 *(["--dry-run"] if dry_run else []))  # fmt: skip
    assert result.code == 2, result.err
    assert result.json()["message"] == (
        f"log.trackers: {tracker} needs the '{tracker}' package, which is not installed;"
        f" install it with: pip install 'fine_tune_cli[{tracker}]'"
    )
    assert not (isolated / "runs" / "demo").exists()  # refused before any work


def test_failing_trackers_warn_once_and_training_goes_on(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's server is down from the start; TensorBoard fails at its first write (a full
    disk, say). Each is one warning; the run completes with its full metrics.jsonl."""
    pytest.importorskip("mlflow")
    from torch.utils.tensorboard import SummaryWriter

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    result = ftc("train", "demo", *TINY, "train.save_every=2", "log.every=1",
                 "log.trackers=[tensorboard,mlflow]", "--json")  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["steps"] == 12
    for name in ("tensorboard", "mlflow"):
        warnings = [line for line in result.err.splitlines() if f"tracker {name} failed" in line]
        assert len(warnings) == 1, result.err
        assert "training continues without it" in warnings[0]
    assert "No space left on device" in result.err
    assert logged_steps(isolated / "runs" / "demo") == list(range(1, 13))
    assert json.loads((isolated / "runs" / "demo" / "trackers.json").read_text()) == {}
