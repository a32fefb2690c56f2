"""The fault matrix through the real CLI: a full disk (EFBIG from RLIMIT_FSIZE in a child,
ENOSPC injected in-process) while writing a checkpoint, best/ or an export, a read-only
output dir, a run dir deleted mid-run, a damaged prepared cache, SIGTERM during eval or
export, and `init_from` a half-written checkpoint. Each checks the exit code, the message,
that every earlier output still verifies and that nothing half-written looks complete."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TINY, Result, cli_env, run_cli

FILE_LIMIT = 256 * 1024  # above every prepared/log file of TINY, below its 0.7 MB weights


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A TINY run: checkpoints at steps 6 and 12, best/."""
    base = tmp_path_factory.mktemp("faults")
    with cli_env(cache_dir, base):
        result = run_cli("train", "demo", *TINY, "--json")
    assert result.code == 0, result.err
    return base / "runs" / "demo"


def copy_run(run: Path, dest: Path, drop_last: bool = False) -> Path:
    """A copy of the trained run; `drop_last`: without its step-12 checkpoint, so
    `--resume auto` continues from step 6 and writes step 12 again."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval", "export"))
    if drop_last:
        shutil.rmtree(dest / "checkpoints" / "step-000012")
    return dest


def leftovers(root: Path) -> list[str]:
    """Temp files and dirs a failed write must not leave behind."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith((".tmp-", ".old-")) or ".tmp" in p.name
    )


def assert_intact(ftc, run: Path) -> None:
    """Every earlier output still verifies; no temp dir, no checkpoint without COMPLETE."""
    verified = ftc("verify", run, "--json")
    assert verified.code == 0, verified.err
    assert leftovers(run) == []
    for step in (run / "checkpoints").glob("step-*"):
        assert (step / "COMPLETE").is_file(), step
    assert not (run / ".lock").exists()


def in_child(*args: str, limit: int | None = None, env: dict[str, str] | None = None) -> Result:
    """`ftc ARGS` in a child process, optionally under RLIMIT_FSIZE (SIGXFSZ ignored, so a
    write past the limit fails with EFBIG as a full disk fails with ENOSPC)."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [sys.executable, "-m", "fine_tune_cli", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        preexec_fn=preexec,
        timeout=600,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def fail_safetensors_writes(monkeypatch: pytest.MonkeyPatch, match: str, code: int) -> None:
    """Writes of model.safetensors into a path containing `match` fail like a full disk:
    half a file, then safetensors' own error (which carries only "os error N")."""
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError

    real = mu.safe_save_file

    def save(tensors, filename, metadata=None):
        if match in str(filename):
            Path(filename).write_bytes(b"\0" * 4096)
            raise SafetensorError(
                f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})"
            )
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(mu, "safe_save_file", save)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE on this process for a moment (SIGXFSZ ignored): writes past it fail
    with EFBIG from the kernel, as a full disk fails with ENOSPC."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


# --------------------------------------------------------------------------- disk full
def test_file_size_limit_while_checkpointing_exits_8(ftc, trained: Path, tmp_path: Path) -> None:
    """The issue's case: a resumed run whose next best/ or checkpoint hits `ulimit -f`
    (in-process: the kernel's EFBIG through safetensors' and torch.save's wrappers)."""
    run = copy_run(trained, tmp_path / "run", drop_last=True)
    before = (run / "checkpoints" / "step-000006" / "manifest.json").read_text()
    with file_size_limit(FILE_LIMIT):
        result = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--resume", "auto", "--json")
    assert result.code == 8, result.err
    e = result.json()
    assert e["exit_code"] == 8 and e["status"] == "error"
    assert "File too large" in e["message"] and "ulimit -f" in e["message"]
    assert e["message"].startswith(str(run)), e["message"]  # names best/ or the checkpoint
    assert_intact(ftc, run)
    assert (run / "checkpoints" / "step-000006" / "manifest.json").read_text() == before
    assert not (run / "checkpoints" / "step-000012").exists()


def test_file_size_limit_on_trainer_state_exits_8(
    ftc, monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path
) -> None:
    """torch.save hitting the limit raises a RuntimeError ("unexpected pos") with the
    OSError only behind it: still exit 8 naming the checkpoint."""
    import torch

    run = copy_run(trained, tmp_path / "run", drop_last=True)
    real = torch.save

    def save(obj, f, *args, **kwargs):  # the limit only while trainer_state.pt is written
        with file_size_limit(64 * 1024):
            return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--resume", "auto", "--json")
    assert result.code == 8, result.err
    message = result.json()["message"]
    assert message.startswith(f"{run / 'checkpoints' / 'step-000012'}: cannot write (File too")
    assert_intact(ftc, run)


@pytest.mark.slow
def test_file_size_limit_in_a_child_process_exits_8(ftc, trained: Path, tmp_path: Path) -> None:
    """As a user meets it: `ulimit -f` on the whole `ftc train --resume auto` process."""
    run = copy_run(trained, tmp_path / "run", drop_last=True)
    before = (run / "checkpoints" / "step-000006" / "manifest.json").read_text()
    result = in_child(
        "train", "demo", *TINY, f"train.run_dir={run}", "--resume", "auto", "--json",
        limit=FILE_LIMIT,
    )  # fmt: skip
    assert result.code == 8, result.err
    e = result.json()
    assert e["exit_code"] == 8 and e["status"] == "error"
    assert "File too large" in e["message"] and "ulimit -f" in e["message"]
    assert e["message"].startswith(str(run)), e["message"]  # names best/ or the checkpoint
    assert "Traceback" not in result.err and "internal error" not in result.err
    assert_intact(ftc, run)
    assert (run / "checkpoints" / "step-000006" / "manifest.json").read_text() == before
    assert not (run / "checkpoints" / "step-000012").exists()
    assert json.loads((run / "provenance.json").read_text())["status"] == "error"


@pytest.mark.parametrize(
    ("where", "match"), [("checkpoint", "checkpoints/.tmp-step-000012"), ("best", ".tmp-best")]
)
def test_disk_full_while_saving_exits_8(
    ftc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str, match: str
) -> None:
    """ENOSPC (as safetensors reports it) while writing the step-12 checkpoint, or the
    first best/: exit 8 naming it; what was written before stays valid."""
    fail_safetensors_writes(monkeypatch, match, errno.ENOSPC)
    run = tmp_path / "run"
    if where == "checkpoint":  # what a SIGKILLed best/ save leaves: the next one removes it
        for stale in (".tmp-best-99999", ".old-best-99999"):
            (run / stale).mkdir(parents=True)
            (run / stale / "model.safetensors").write_bytes(b"half")
    result = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--json")
    assert result.code == 8, result.err
    message = result.json()["message"]
    target = run / ("checkpoints/step-000012" if where == "checkpoint" else "best")
    assert message.startswith(f"{target}: cannot write (No space left on device)"), message
    assert "free space" in message
    if where == "checkpoint":
        assert_intact(ftc, run)
        assert (run / "checkpoints" / "step-000006" / "COMPLETE").is_file()
    else:  # the first write of the run failed: nothing may look written
        assert not (run / "best").exists() and not (run / "checkpoints").exists()
        assert leftovers(run) == []
    assert json.loads((run / "provenance.json").read_text())["status"] == "error"


def test_disk_full_during_export_keeps_the_previous_export(
    ftc, monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path
) -> None:
    run = copy_run(trained, tmp_path / "run")
    first = ftc("export", run, "--json")
    assert first.code == 0, first.err
    manifest = (run / "export" / "hf" / "manifest.json").read_text()
    fail_safetensors_writes(monkeypatch, ".tmp-hf", errno.ENOSPC)
    again = ftc("export", run, "--overwrite", "--json")
    assert again.code == 8, again.err
    assert again.json()["message"].startswith(f"{run / 'export' / 'hf'}: cannot write (No space")
    assert (run / "export" / "hf" / "manifest.json").read_text() == manifest  # the old one
    assert_intact(ftc, run)


@pytest.mark.slow
def test_file_size_limit_during_export_exits_8(ftc, trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path / "run")
    result = in_child("export", str(run), "--json", limit=FILE_LIMIT)
    assert result.code == 8, result.err
    assert "File too large" in result.json()["message"]
    assert not (run / "export" / "hf").exists()
    assert_intact(ftc, run)


# --------------------------------------------------------------------------- read-only
def test_read_only_output_dir_exits_8(
    ftc, monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path
) -> None:
    """EROFS (injected: as root, chmod does not stop writes) when `ftc eval` and `ftc
    export` write into the run dir: exit 8 naming the path, nothing written."""
    run = copy_run(trained, tmp_path / "run")
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if self.is_relative_to(run):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    evaluated = ftc("eval", run, "--json")
    assert evaluated.code == 8, evaluated.err
    assert "Read-only file system" in evaluated.json()["message"]
    assert str(run / "eval") in evaluated.json()["message"]
    exported = ftc("export", run, "--json")
    assert exported.code == 8, exported.err
    message = exported.json()["message"]
    assert message.startswith(str(run / "export" / "hf")) and "read-only" in message
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    assert not (run / "eval").exists() and not (run / "export").exists()
    assert_intact(ftc, run)


# --------------------------------------------------------------------------- run dir gone
def test_run_dir_deleted_while_training_exits_8_naming_it(
    ftc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fine_tune_cli.runs import RunDir

    run = tmp_path / "run"
    real = RunDir.log_metrics

    def log_metrics(self: RunDir, record: dict) -> None:
        if record.get("step", 0) >= 3 and self.path.is_dir():
            shutil.rmtree(self.path)  # someone deletes the run dir mid-run
        real(self, record)

    monkeypatch.setattr(RunDir, "log_metrics", log_metrics)
    result = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--json")
    assert result.code == 8, result.err
    message = result.json()["message"]
    assert message.startswith(f"{run}: the directory vanished"), message
    assert not run.exists()  # not recreated half-empty by a later write


# --------------------------------------------------------------------------- prepared cache
def test_damaged_prepared_cache_is_rebuilt_with_a_warning(ftc, tmp_path: Path) -> None:
    args = ["demo", *TINY, "data.split.seed=6029", f"data.cache_dir={tmp_path / 'cache'}"]
    first = ftc("prepare", *args, "--json")
    assert first.code == 0, first.err
    entry = Path(first.json()["outputs"]["prepared"])

    ids = entry / "train" / "input_ids.npy"
    ids.write_bytes(ids.read_bytes()[:-100])  # truncated
    truncated = ftc("prepare", *args, "--json")
    assert truncated.code == 0, truncated.err
    assert truncated.json()["cache_hit"] is False
    assert "prepared data is damaged (train/input_ids.npy has" in truncated.err
    assert "rebuilding it" in truncated.err

    texts = entry / "train" / "texts.jsonl"
    data = bytearray(texts.read_bytes())
    data[10] = ord("#") if data[10] != ord("#") else ord("%")  # same size, edited
    texts.write_bytes(bytes(data))
    edited = ftc("prepare", *args, "--json")
    assert edited.code == 0 and edited.json()["cache_hit"] is False, edited.err
    assert "train/texts.jsonl was changed after it was built" in edited.err

    intact = ftc("prepare", *args, "--json")
    assert intact.code == 0 and intact.json()["cache_hit"] is True
    assert "damaged" not in intact.err


# --------------------------------------------------------------------------- SIGTERM
class SigtermNotHandled(Exception):
    pass


@pytest.mark.parametrize("point", ["eval", "export"])
def test_sigterm_during_eval_or_export_publishes_nothing(
    ftc, monkeypatch: pytest.MonkeyPatch, trained: Path, tmp_path: Path, point: str
) -> None:
    """SIGTERM once eval has its metrics / export has its checked artefact (in-process:
    FTC_FAULT_SIGNAL_AT): exit 143, nothing published, the run still verifies."""
    run = copy_run(trained, tmp_path / "run")

    def unhandled(signum: int, frame: object) -> None:  # ftc did not take SIGTERM over
        raise SigtermNotHandled

    old = signal.signal(signal.SIGTERM, unhandled)  # never the default: it kills pytest
    monkeypatch.setenv("FTC_FAULT_SIGNAL_AT", point)
    try:
        result = ftc(point, run, "--json")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert result.code == 143, result.err
    e = result.json()
    assert e["status"] == "interrupted" and e["exit_code"] == 143
    assert "SIGTERM" in e["message"]
    assert not (run / point).exists() or not any((run / point).rglob("*"))
    assert_intact(ftc, run)


@pytest.mark.slow
def test_sigterm_in_a_child_process_exits_143(ftc, trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path / "run")
    result = in_child("export", str(run), "--json", env={"FTC_FAULT_SIGNAL_AT": "export"})
    assert result.code == 143, result.err
    assert result.json()["status"] == "interrupted"
    assert not (run / "export" / "hf").exists()
    assert_intact(ftc, run)


# --------------------------------------------------------------------------- init_from
def test_init_from_a_half_written_checkpoint_exits_2(ftc, trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path / "run")
    half = run / "checkpoints" / "step-000012"
    (half / "COMPLETE").unlink()  # its writer died before the marker
    for path in (half, run / "checkpoints" / ".tmp-step-000018-4242"):
        if not path.exists():
            shutil.copytree(run / "best", path)  # a temp dir of a killed save
        result = ftc("train", "demo", *TINY, f"model.init_from={path}", "--json")
        assert result.code == 2, result.err
        message = result.json()["message"]
        assert message.startswith(f"model.init_from: {path} is a checkpoint without COMPLETE")

    best = copy_run(trained, tmp_path / "other") / "best"
    weights = bytearray((best / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF  # one flipped bit in a complete model dir: refused before loading
    (best / "model.safetensors").write_bytes(bytes(weights))
    corrupt = ftc("train", "demo", *TINY, f"model.init_from={best}", "--json")
    assert corrupt.code == 6, corrupt.err
    assert "model.safetensors: sha256 does not match" in corrupt.json()["message"]
