"""`make mutation`: a small mutation run over the modules that carry guarantees (batching,
trainer, checkpoint, parity, manifest). Each mutation is one plausible bug, applied to a
throwaway copy of the repository (never to your tree); the tests that guard that module run
against the copy; a mutation is *killed* when they fail (or hang past --timeout) and
*survives* when they pass.

    python scripts/mutation.py [--only NAME ...] [--worktree] [--keep]

The copy is `git archive HEAD` (committed code and tests; `--worktree` copies the working
tree instead), unpacked in a temp dir and run from there with PYTHONPATH pointing at it, so
an editable install of this checkout cannot win. A baseline run of every selected test file
on the unmutated copy must pass first. Exit 0 when every mutation was killed, 1 otherwise;
survivors are listed (a survivor is a guarantee no test would notice breaking).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # file in the repository
    old: str  # exact text, must occur once
    new: str
    tests: tuple[str, ...]  # pytest arguments guarding it


BATCHING = ("tests/tasks/test_batch_invariance.py", "tests/unit/test_batching.py")
GATE = ("tests/lm/test_export_gate_limits.py",)
RESUME = ("tests/engine/test_resume.py", "tests/engine/test_resume_longer.py")
TRAINING = ("tests/engine/test_training_paths.py",)
VERIFY = ("tests/cli/test_e2e.py", "-k", "tamper or verify")

MUTATIONS = [
    # batching: the padding mask and the data order
    Mutation(
        "batching: attention mask all ones",
        "fine_tune_cli/data/batching.py",
        "mask[j, : len(row)] = 1",
        "mask[j, :] = 1",
        BATCHING,
    ),
    Mutation(
        "batching: pads filled with id 0 instead of the pad id",
        "fine_tune_cli/data/batching.py",
        "ids = np.full((len(rows), width), pad_id, dtype=np.int64)",
        "ids = np.full((len(rows), width), 0, dtype=np.int64)",
        BATCHING,
    ),
    Mutation(
        "batching: the epoch order ignores the epoch",
        "fine_tune_cli/data/batching.py",
        "def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:\n",
        "def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:\n    epoch = 0\n",
        BATCHING + RESUME,
    ),
    # parity: the gate's three comparisons and its agreement count
    Mutation(
        "parity: metric drop measured with the sign flipped",
        "fine_tune_cli/export/parity.py",
        "drop = max(0.0, delta if metric in LOWER_IS_BETTER else -delta)",
        "drop = max(0.0, -delta if metric in LOWER_IS_BETTER else delta)",
        GATE,
    ),
    Mutation(
        "parity: metric-drop check with the comparison flipped",
        "fine_tune_cli/export/parity.py",
        'if parity["metric_drop"] > tolerances["max_metric_drop"]:',
        'if parity["metric_drop"] < tolerances["max_metric_drop"]:',
        GATE,
    ),
    Mutation(
        "parity: agreement check with the comparison flipped",
        "fine_tune_cli/export/parity.py",
        'and parity["prediction_agreement"] < tolerances["min_agreement"]',
        'and parity["prediction_agreement"] > tolerances["min_agreement"]',
        GATE,
    ),
    Mutation(
        "parity: max |logit diff| check with the comparison flipped",
        "fine_tune_cli/export/parity.py",
        'parity["max_abs_diff"] > tolerances["max_abs_diff"]:',
        'parity["max_abs_diff"] < tolerances["max_abs_diff"]:',
        GATE,
    ),
    Mutation(
        "parity: agreement counted on the reference only",
        "fine_tune_cli/export/parity.py",
        "same = want.argmax(-1) == got.argmax(-1)",
        "same = want.argmax(-1) == want.argmax(-1)",
        GATE,
    ),
    # trainer: accumulation weighting, resume position, best-model selection
    Mutation(
        "trainer: micro-batch losses not weighted by their share",
        "fine_tune_cli/engine/trainer.py",
        "loss = task.loss(t.model, batch) * (task.units(batch) * dist.world / units)",
        "loss = task.loss(t.model, batch) / len(batches)",
        TRAINING,
    ),
    Mutation(
        "trainer: resume skips one more batch",
        "fine_tune_cli/engine/trainer.py",
        "groups[state.step_in_epoch :]",
        "groups[state.step_in_epoch + 1 :]",
        RESUME,
    ),
    Mutation(
        "trainer: a tie counts as a new best",
        "fine_tune_cli/engine/trainer.py",
        "value > state.best_value + delta",
        "value >= state.best_value + delta",
        TRAINING + RESUME,
    ),
    # checkpoint: what a resume restores, and which checkpoints are kept
    Mutation(
        "checkpoint: keep_last keeps one fewer",
        "fine_tune_cli/engine/checkpoint.py",
        "for old in complete_checkpoints(run_dir)[:-keep_last]:",
        "for old in complete_checkpoints(run_dir)[: -keep_last + 1 or None]:",
        TRAINING,
    ),
    # manifest: the sha256 check
    Mutation(
        "manifest: sha256 mismatch ignored",
        "fine_tune_cli/manifest.py",
        'if sha256_file(target) != entry["sha256"]:',
        'if sha256_file(target) == "never":',
        VERIFY,
    ),
]


def copy_repo(dest: Path, worktree: bool) -> None:
    if worktree:
        ignore = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info")
        shutil.copytree(REPO, dest, ignore=ignore, dirs_exist_ok=True)
        return
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def pytest(
    copy: Path, args: tuple[str, ...], log: Path, timeout: float
) -> tuple[int | None, float]:
    """pytest's exit code (None: still running after `timeout`) and the seconds it took."""
    env = os.environ | {
        "PYTHONPATH": str(copy),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "FTC_CACHE_DIR": str(copy / ".cache"),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args]
    start = time.time()
    with open(log, "w") as fh:
        try:
            done = subprocess.run(
                cmd, cwd=copy, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
            )
        except subprocess.TimeoutExpired:  # e.g. a mutant that never ends an epoch
            return None, time.time() - start
    return done.returncode, time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="run mutations whose name contains these")
    parser.add_argument("--worktree", action="store_true", help="mutate the working tree's copy")
    parser.add_argument("--keep", action="store_true", help="keep the temp copy and logs")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds per mutant (past it: a hang, killed)"
    )
    opts = parser.parse_args()
    chosen = [m for m in MUTATIONS if not opts.only or any(o in m.name for o in opts.only)]
    work = Path(tempfile.mkdtemp(prefix="ftc-mutation-"))
    copy = work / "repo"
    copy.mkdir()
    copy_repo(copy, opts.worktree)
    where = subprocess.run(
        [sys.executable, "-c", "import fine_tune_cli; print(fine_tune_cli.__file__)"],
        cwd=copy, env=os.environ | {"PYTHONPATH": str(copy)}, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    if not where.startswith(str(copy)):
        print(f"mutation: the copy's package is not the one imported ({where})", file=sys.stderr)
        return 2
    print(f"mutation: {len(chosen)} mutation(s) on a copy in {copy}", flush=True)

    files = sorted({a for m in chosen for a in m.tests if a.startswith("tests/")})
    code, seconds = pytest(copy, tuple(files), work / "baseline.log", 3600)
    if code != 0:
        print(f"mutation: the unmutated tests fail (see {work / 'baseline.log'})", file=sys.stderr)
        return 2
    print(f"baseline: {len(files)} test file(s) pass ({seconds:.0f} s)", flush=True)

    survivors, stale = [], []
    for i, m in enumerate(chosen):
        target = copy / m.path
        original = target.read_text()
        if original.count(m.old) != 1:
            stale.append(m.name)
            print(f"STALE     {m.name}: the text to mutate is not in {m.path} once", flush=True)
            continue
        target.write_text(original.replace(m.old, m.new))
        try:
            code, seconds = pytest(copy, m.tests, work / f"mutant-{i:02d}.log", opts.timeout)
        finally:
            target.write_text(original)
        verdict = "SURVIVED" if code == 0 else "killed" if code is not None else "hung"
        if code == 0:
            survivors.append(m.name)
        print(f"{verdict:9s} {m.name} ({seconds:.0f} s; {' '.join(m.tests)})", flush=True)
    killed = len(chosen) - len(survivors) - len(stale)  # a hang counts: the tests never pass
    print(f"mutation: {killed} killed, {len(survivors)} survived, {len(stale)} stale")
    for name in survivors:
        print(f"  survivor: {name}")
    if opts.keep:
        print(f"mutation: logs and copy kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
