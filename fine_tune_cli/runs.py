"""Run directories: layout, the one "what is this path" resolver, the lock,
recipe.lock.yaml, provenance and metrics.jsonl.

```
runs/<name>/ recipe.lock.yaml provenance.json metrics.jsonl train.log .lock trackers.json
             checkpoints/step-000200/  best/  eval/<split>/  export/<format>/
             tensorboard/  wandb/  (when those trackers are on)
```
Only this module spells that layout; other modules use its names and `inspect_path`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fine_tune_cli import formats
from fine_tune_cli.errors import ConflictError, OutputError, RecipeError, output_failure

if TYPE_CHECKING:
    from fine_tune_cli.recipe import Recipe

LOCK = ".lock"
PROVENANCE = "provenance.json"
RECIPE_LOCK = formats.RECIPE_LOCK_NAME
METRICS = "metrics.jsonl"
TRAIN_LOG = "train.log"
CHECKPOINTS = "checkpoints"
BEST = "best"
EVAL = "eval"
EXPORT = "export"
STEP_PREFIX = "step-"
COMPLETE = "COMPLETE"  # written last into a checkpoint: its presence means complete
MODEL_CONFIG = "config.json"  # an HF model dir (best/, a checkpoint, most exports)
MANIFEST = "manifest.json"  # sha256 of every file (best/, checkpoints, exports)
TRACKERS = "trackers.json"  # experiment-tracker run ids and the last step each was given
TENSORBOARD = "tensorboard"  # TensorBoard event files (W&B writes its own wandb/)


class MetricSink(Protocol):
    """What receives metrics.jsonl records besides the file (fine_tune_cli.trackers)."""

    def record(self, record: dict[str, Any]) -> None: ...

    def commit(self, step: int) -> None: ...


def step_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """A run dir's complete checkpoints, oldest first."""
    return sorted(p.parent for p in (run_dir / CHECKPOINTS).glob(f"{STEP_PREFIX}*/{COMPLETE}"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


PathKind = Literal["missing", "run", "checkpoint", "model", "other"]


@dataclass(frozen=True)
class PathInfo:
    """What a path given on the command line or in a recipe points at.

    run: a run dir (recipe.lock.yaml, no config.json); checkpoint: a checkpoint dir
    (both); model: best/, an export or any HF model dir (config.json or manifest.json);
    other: an existing dir that is none of these."""

    path: Path
    kind: PathKind
    has_manifest: bool
    best: Path | None  # a run dir's best/ when it holds a model
    latest: Path | None  # a run dir's newest complete checkpoint

    @property
    def run(self) -> Path | None:
        """The run dir the path is or lies in (checkpoints: checkpoints/step-N/)."""
        if self.kind == "run":
            return self.path
        if self.kind == "checkpoint":
            return self.path.parent.parent
        return None


def inspect_path(path: str | Path) -> PathInfo:
    """The one resolver of "what does this path point at"; callers (eval/export targets,
    predict's model dir, model.init_from, --resume) apply their own rules to it."""
    path = Path(path)
    if not path.exists():
        return PathInfo(path, "missing", False, None, None)
    has_config = (path / MODEL_CONFIG).is_file()
    has_lock = (path / RECIPE_LOCK).is_file()
    has_manifest = (path / MANIFEST).is_file()
    if has_lock and has_config:
        kind: PathKind = "checkpoint"
    elif has_lock:
        kind = "run"
    elif has_config or has_manifest:
        kind = "model"
    else:
        kind = "other"
    best = path / BEST
    return PathInfo(
        path,
        kind,
        has_manifest,
        best if (best / MODEL_CONFIG).is_file() else None,
        latest_checkpoint(path) if not has_config else None,
    )


def default_runs_dir() -> Path:
    """Where run dirs go unless a recipe sets train.run_dir: $FTC_RUNS_DIR, else ./runs."""
    return Path(os.environ.get("FTC_RUNS_DIR") or "runs")


def locate(arg: str | Path) -> Path:
    """A RUN_DIR / MODEL_DIR argument: the path as given when it exists; else, when
    relative, the same under $FTC_RUNS_DIR, then ./runs (`ftc eval demo` finds the run
    `ftc train demo` made wherever run dirs go); else as given, for the caller's error."""
    path = Path(arg)
    if path.exists() or path.is_absolute():
        return path
    for root in dict.fromkeys((default_runs_dir(), Path("runs"))):
        if (root / path).exists():
            return root / path
    return path


def searched(path: str | Path) -> str:
    """Where `locate` looked, for a "not found" message."""
    if Path(path).is_absolute():
        return ""
    roots = ", ".join(str(r) for r in dict.fromkeys((default_runs_dir(), Path("runs"))))
    return f" (also looked under {roots})"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def vanished(directory: Path) -> str:
    """The message when a directory ftc is writing into was deleted or moved away."""
    return (
        f"{directory}: the directory vanished while ftc was writing into it (deleted or"
        " moved); what was in it is gone: run the command again"
    )


def write_failed(path: Path, exc: OSError) -> OutputError:
    """OutputError (exit 8) for a failed write of `path`, saying why and what to do."""
    if not path.parent.is_dir():
        return OutputError(vanished(path.parent))
    return output_failure(exc, path) or OutputError(f"{path}: cannot write ({exc.strerror})")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file via a temp file + rename so readers never see half of it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, exc) from None


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def recipe_lock_text(recipe: Recipe) -> str:
    """recipe.lock.yaml: the resolved recipe under a format_version line. The recipe
    loader knows that key (and strips it), so the lock stays a recipe `ftc train` takes."""
    from fine_tune_cli.recipe import dump_recipe

    return f"{formats.KEY}: {formats.CURRENT['recipe_lock']}\n{dump_recipe(recipe)}"


def read_recipe_lock(path: Path) -> Recipe:
    """A recipe.lock.yaml of any version up to the current one, as a validated recipe."""
    import yaml

    from fine_tune_cli.recipe import validate_tree

    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RecipeError(f"{path}: unreadable recipe lock ({exc})") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: not a recipe lock (expected a YAML mapping)")
    tree = formats.upgrade("recipe_lock", tree, path)
    del tree[formats.KEY]
    return validate_tree(tree, default_origin=str(path))


class RunDir:
    """One run's directory; holds the lock while a command writes into it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock: Any = None  # a held fine_tune_cli.locks.FileLock
        self.tracker: MetricSink | None = None  # experiment trackers (fine_tune_cli.trackers)

    # -- layout ------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def provenance_file(self) -> Path:
        return self.path / PROVENANCE

    def provenance(self) -> dict[str, Any]:
        return read_json(self.provenance_file)

    def is_complete(self) -> bool:
        return self.provenance().get("status") == "complete"

    def has_checkpoints(self) -> bool:
        return bool(complete_checkpoints(self.path))

    # -- lock --------------------------------------------------------------------------
    def acquire(self) -> None:
        """Exclusive kernel lock on `.lock` (see fine_tune_cli.locks): a second taker gets
        exit 7 naming this process; the lock dies with its holder, so none is ever stale."""
        from fine_tune_cli.locks import run_lock

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create the run dir ({exc.strerror})") from None
        self._lock = run_lock(self.path, LOCK)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDir:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- starting a run ----------------------------------------------------------------
    def check_fresh_start(self, overwrite: bool) -> None:
        """Refuse to silently clobber a complete or unfinished run."""
        if overwrite:
            for child in self.path.iterdir():
                if child.name == LOCK:
                    continue
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            return
        if self.is_complete():
            raise ConflictError(
                f"{self.path}: holds a complete run; pass --overwrite to replace it,"
                " --resume to continue it, or set train.run_dir"
            )
        if self.has_checkpoints():
            raise ConflictError(
                f"{self.path}: holds an unfinished run; pass --resume auto to continue it"
                " or --overwrite to start again"
            )

    def log_metrics(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl line (the logger protocol: a dict of numbers at a step)."""
        try:
            with open(self.metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=float) + "\n")
        except OSError as exc:
            raise write_failed(self.metrics_file, exc) from None
        if self.tracker is not None:
            self.tracker.record(record)

    def checkpoint_committed(self, step: int) -> None:
        """A checkpoint at `step` is complete: trackers may now show the points up to it
        (never earlier, so a resume from it shows no step twice)."""
        if self.tracker is not None:
            self.tracker.commit(step)

    def history(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        out = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
        return out

    def truncate_history(self, step: int) -> None:
        """On resume, drop log lines after the checkpoint so the log matches one run."""
        if not self.metrics_file.is_file():
            return
        kept = [r for r in self.history() if r.get("step", 0) <= step]
        tmp = self.metrics_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in kept))
        os.replace(tmp, self.metrics_file)


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Package versions and host facts for provenance.json."""
    import numpy
    import tokenizers
    import torch
    import transformers

    from fine_tune_cli import __version__

    return {
        "ftc": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "git_sha": git_sha(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "argv": sys.argv,
    }


def lock_owner_alive(path: Path) -> bool:
    """True while a live process holds the run dir's kernel lock."""
    from fine_tune_cli.locks import is_locked

    return is_locked(path / LOCK)


def summarize_run(path: Path) -> dict[str, Any] | None:
    """One row of `ftc runs list`, or None when `path` is not a run dir.

    Reads recipe.lock.yaml as plain YAML (not through the schema) so runs written by an
    older ftc still list.
    """
    import yaml

    run = RunDir(path)
    prov = run.provenance()
    lock_file = path / RECIPE_LOCK
    if not prov and not lock_file.is_file():
        return None
    try:
        recipe = yaml.safe_load(lock_file.read_text()) if lock_file.is_file() else {}
    except (OSError, yaml.YAMLError):
        recipe = {}
    recipe = recipe if isinstance(recipe, dict) else {}
    model = recipe.get("model") or {}
    train = recipe.get("train") or {}
    status = prov.get("status", "unknown")
    if status == "running" and not lock_owner_alive(path):
        status = "stopped"  # killed without a chance to record it (SIGKILL, power loss)
    history = run.history()
    steps = [r["step"] for r in history if isinstance(r.get("step"), int)]
    summary = prov.get("summary") or {}
    best_metric = train.get("best_metric") if isinstance(train, dict) else None
    best_step = summary.get("best_step")
    evals = [r for r in history if r.get("split") == "validation"]
    best_value = None
    key = f"eval_{best_metric}"
    scored = [r for r in evals if isinstance(r.get(key), int | float)]
    if best_metric and scored:
        from fine_tune_cli.recipe import LOWER_IS_BETTER

        at_best = [r for r in scored if r.get("step") == best_step]
        if at_best:
            chosen = at_best[-1]
        else:  # unfinished run: the best evaluation so far
            sign = 1 if best_metric in LOWER_IS_BETTER else -1
            chosen = min(scored, key=lambda r: sign * r[key])
        best_step, best_value = chosen.get("step"), chosen[key]
    checkpoints = [p.name for p in complete_checkpoints(run.path)]
    return {
        "name": path.name,
        "path": str(path),
        "status": status,
        "family": model.get("family"),
        "task": model.get("task"),
        "step": summary.get("steps", max(steps, default=0)),
        "best_step": best_step,
        "best_metric": best_metric,
        "best_value": best_value,
        "started": prov.get("started"),
        "finished": prov.get("finished"),
        "seconds": summary.get("seconds"),
        "checkpoints": len(checkpoints),
        "resumable": bool(checkpoints) and status != "complete",
        "error": prov.get("error"),
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Run dirs directly under `root` (or `root` itself), newest start first."""
    rows = []
    own = summarize_run(root)
    if own is not None:
        rows.append(own)
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        row = summarize_run(child)
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda r: r["started"] or "", reverse=True)
    return rows
