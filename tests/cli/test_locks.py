"""Kernel locks through the real CLI: a second `ftc train` on a run dir is refused (exit 7)
naming the holder; processes needing the same prepared-cache entry wait and build it once;
a killed holder's lock is free at once; concurrent trainings sharing one cold cache match
a solo run exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import TINY

# Holds a lock in another process until killed; says "held" once it has it.
HOLDER = """
import sys, time
from pathlib import Path
kind, path = sys.argv[1], Path(sys.argv[2])
sys.argv = ["ftc", "train", "holder-recipe.yaml"]
from fine_tune_cli.locks import entry_lock, run_lock
lock = run_lock(path) if kind == "run" else entry_lock(path)
print("held", flush=True)
time.sleep(600)
"""


def hold_lock(kind: str, path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, kind, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def start_ftc(args: list[str], log: Path, cache: Path) -> subprocess.Popen:
    """`python -m fine_tune_cli ARGS` with stderr in `log` (readable while it runs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FTC_CACHE_DIR": str(cache)}
    with open(log, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "fine_tune_cli", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> tuple[int, dict]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, log.read_text()
    return proc.returncode, json.loads(lines[-1])


def wait_for_text(path: Path, text: str, procs: list[subprocess.Popen], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert all(p.poll() is None for p in procs), path.read_text()
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.1)


def test_second_taker_of_a_run_dir_gets_exit_7_naming_the_holder(ftc, tmp_path: Path) -> None:
    run = tmp_path / "locked"
    run.mkdir()
    holder = hold_lock("run", run)
    try:
        refused = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--json")
        assert refused.code == 7, refused.err
        e = refused.json()
        assert e["status"] == "error" and e["exit_code"] == 7
        assert f"pid {holder.pid} on {socket.gethostname()}" in e["message"]
        assert "ftc train holder-recipe.yaml" in e["message"]
        assert not (run / "provenance.json").exists()  # the refused run wrote nothing
        assert (run / ".lock").is_file()  # ... and left the holder's lock alone
    finally:
        holder.kill()
        holder.wait()
    # SIGKILLed: the kernel freed the lock at once, though the lock file is still there.
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid
    ok = ftc("train", "demo", *TINY, f"train.run_dir={run}", "--json")
    assert ok.code == 0, ok.err
    assert json.loads((run / "provenance.json").read_text())["status"] == "complete"
    assert not (run / ".lock").exists()


def test_runs_list_sees_a_live_holder_as_running(ftc, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "live"
    run.mkdir(parents=True)
    (run / "provenance.json").write_text(json.dumps({"status": "running", "started": "x"}))
    holder = hold_lock("run", run)
    try:
        rows = ftc("runs", "list", tmp_path / "runs", "--json").json()["runs"]
        assert rows[0]["status"] == "running"
    finally:
        holder.kill()
        holder.wait()
    rows = ftc("runs", "list", tmp_path / "runs", "--json").json()["runs"]
    assert rows[0]["status"] == "stopped"  # its holder was killed: not running any more


def test_waiters_on_a_cache_entry_build_it_once_after_a_killed_holder(tmp_path: Path) -> None:
    """Two `ftc prepare` wait on an entry whose builder is then SIGKILLed: the lock is free
    at once, one of them builds the entry and the other reuses it."""
    from fine_tune_cli.data.prepare import data_hash, prepared_path
    from fine_tune_cli.recipe import load_recipe

    cache = tmp_path / "cache"
    args = ["demo", *TINY, "data.split.seed=4411", f"data.cache_dir={cache}"]
    recipe = load_recipe("demo", args[1:]).recipe
    entry = prepared_path(recipe, data_hash(recipe))
    holder = hold_lock("entry", entry)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_ftc(["prepare", *args, "--json"], log, cache) for log in logs]
    try:
        for log in logs:
            wait_for_text(log, f"waiting for pid {holder.pid}", procs)
    finally:
        holder.kill()
        holder.wait()
    results = [finish(p, log) for p, log in zip(procs, logs, strict=True)]
    assert [code for code, _ in results] == [0, 0], [log.read_text() for log in logs]
    assert sorted(p["cache_hit"] for _, p in results) == [False, True]
    assert {p["outputs"]["prepared"] for _, p in results} == {str(entry)}
    assert sorted(x.name for x in entry.parent.iterdir()) == [entry.name]  # no tmp, no lock


def test_three_concurrent_trainings_share_one_cold_cache(tmp_path: Path) -> None:
    """Three `ftc train` of one recipe in separate run dirs on a cold cache: the data is
    prepared once, and each run's metrics and weights equal a solo run's bit for bit.

    The solo run comes after, on the same cache: this is about concurrent runs disturbing
    each other (a half-built entry, a shared file), not about two cold caches building
    byte-identical data (tokenizer training ties, huggingface/tokenizers#1794)."""
    args = ["demo", *TINY, "train.max_steps=4", "train.eval_every=4", "--json"]
    args += ["data.source.limit=200", "data.split.seed=5123"]
    cache = tmp_path / "cold"
    logs = [tmp_path / f"r{i}.log" for i in range(3)]
    procs = [
        start_ftc(["train", *args, f"train.run_dir={tmp_path / f'r{i}'}"], log, cache)
        for i, log in enumerate(logs)
    ]
    results = [finish(p, log) for p, log in zip(procs, logs, strict=True)]
    assert [code for code, _ in results] == [0, 0, 0], [log.read_text() for log in logs]
    texts = [log.read_text() for log in logs]
    built = [t for t in texts if "(prepared);" in t]
    reused = [t for t in texts if "(cache hit);" in t]
    assert (len(built), len(reused)) == (1, 2), texts
    assert len(list((cache / "prepared").iterdir())) == 1  # one entry, no tmp dir or lock

    solo_log = tmp_path / "solo.log"
    solo = start_ftc(["train", *args, f"train.run_dir={tmp_path / 'solo'}"], solo_log, cache)
    code, expected = finish(solo, solo_log)
    assert code == 0, solo_log.read_text()
    solo_weights = (tmp_path / "solo" / "best" / "model.safetensors").read_bytes()
    for i, (_, payload) in enumerate(results):
        assert payload["metrics"] == expected["metrics"], i
        assert (tmp_path / f"r{i}" / "best" / "model.safetensors").read_bytes() == solo_weights
