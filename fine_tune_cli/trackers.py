"""Experiment trackers (`log.trackers`): TensorBoard, MLflow, Weights & Biases.

One registry, one small protocol. A training run hands every metrics.jsonl record to
`Trackers`, which buffers it and passes it on only when the checkpoint that covers it
commits (and at the end of a normal run). A run killed after a checkpoint therefore never
showed the steps it is about to redo, and a resume shows no step twice. `trackers.json`
in the run dir keeps each tracker's run id and the last step it was given, so a resume
continues the same tracker run (a tracker that missed steps gets them replayed from
metrics.jsonl; a resume from a checkpoint older than what a tracker holds starts a new
tracker run, and TensorBoard purges the steps after the checkpoint).

A tracker that fails while the run goes on (server down, disk full, any exception) is
warned about once and dropped: trackers never stop training or evaluation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fine_tune_cli.optional import require
from fine_tune_cli.runs import (
    BEST,
    MANIFEST,
    RECIPE_LOCK,
    TENSORBOARD,
    TRACKERS,
    RunDir,
    read_json,
    write_json_atomic,
)

if TYPE_CHECKING:
    from fine_tune_cli.recipe import Recipe
    from fine_tune_cli.targets import Target

log = logging.getLogger("ftc")

Points = dict[str, float]  # metric name (train/loss, eval/accuracy) -> value


def flat_params(recipe: Recipe) -> dict[str, str | int | float | bool]:
    """The resolved recipe as dotted keys with scalar values (lists as JSON, null as
    "null"): MLflow params, W&B config, TensorBoard hparams."""

    def walk(tree: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                out.update(walk(value, f"{prefix}{key}."))
            elif isinstance(value, str | int | float | bool):
                out[f"{prefix}{key}"] = value
            else:
                out[f"{prefix}{key}"] = json.dumps(value)
        return out

    return walk(recipe.resolved(), "")


def points_of(record: dict[str, Any]) -> Points:
    """One metrics.jsonl record as tracker metrics: `train/<name>`, or for an evaluation
    (`split: validation`, keys `eval_<name>`) `eval/<name>`."""
    split = record.get("split")
    group = "train" if split is None else "eval" if split == "validation" else str(split)
    out: Points = {}
    for key, value in record.items():
        if key in ("step", "split") or isinstance(value, bool):
            continue
        if not isinstance(value, int | float):
            continue
        if split is not None:
            if not key.startswith("eval_"):
                continue  # the eval record's epoch: train/epoch has it
            key = key[len("eval_") :]
        out[f"{group}/{key}"] = float(value)
    return out


class Tracker(Protocol):
    """One tracker backend. `start` returns what trackers.json keeps for it (its run id).
    `previous`: that, from an earlier attempt of this run (None: a new tracker run);
    `resume_step`: the checkpoint a training run resumes from (None: a fresh start, or
    `attach`: `ftc eval` adding its figures to the finished run's tracker run)."""

    name: ClassVar[str]
    module: ClassVar[str]  # what `require` imports (its package decides the extra)
    rewinds: ClassVar[bool]  # can drop points after a step (else: a new run on rewind)

    def start(
        self,
        run: RunDir,
        recipe: Recipe,
        previous: dict[str, Any] | None,
        resume_step: int | None,
        attach: bool,
    ) -> dict[str, Any]: ...

    def log(self, step: int, points: Points, timestamp: float) -> None: ...

    def artifacts(self, path: Path, name: str) -> None: ...

    def summary(self, step: int | None, points: Points) -> None: ...

    def close(self, status: str) -> None: ...


# --------------------------------------------------------------------------- TensorBoard
class TensorBoard:
    """Event files under RUN/tensorboard/; `purge_step` on resume drops any point after the
    checkpoint; the resolved recipe as text and the recipe keys as hparams."""

    name: ClassVar[str] = "tensorboard"
    module: ClassVar[str] = "tensorboard"
    rewinds: ClassVar[bool] = True

    def __init__(self) -> None:
        self.writer: Any = None

    def start(
        self,
        run: RunDir,
        recipe: Recipe,
        previous: dict[str, Any] | None,
        resume_step: int | None,
        attach: bool,
    ) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        logdir = run.path / TENSORBOARD
        if previous is None and resume_step is None and not attach:
            shutil.rmtree(logdir, ignore_errors=True)  # an attempt that committed nothing
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(str(logdir), purge_step=purge)
        if previous is None and not attach:
            self._describe(recipe)
        return {}

    def _describe(self, recipe: Recipe) -> None:
        from torch.utils.tensorboard.summary import hparams

        from fine_tune_cli.recipe import dump_recipe

        text = "\n".join("    " + line for line in dump_recipe(recipe).splitlines())
        self.writer.add_text("recipe", text, 0)  # indented: Markdown shows it verbatim
        best = f"eval/{recipe.train.best_metric}"
        for summary in hparams(flat_params(recipe), {best: None}):
            self.writer.file_writer.add_summary(summary, 0)

    def log(self, step: int, points: Points, timestamp: float) -> None:
        for key, value in points.items():
            self.writer.add_scalar(key, value, step, walltime=timestamp)
        self.writer.flush()

    def artifacts(self, path: Path, name: str) -> None:
        """Files are not TensorBoard's business (they sit next to it in the run dir)."""

    def summary(self, step: int | None, points: Points) -> None:
        self.log(step or 0, points, time.time())

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------- MLflow
class MLflow:
    """A run in the experiment named by MLFLOW_EXPERIMENT_NAME (or _ID), else the recipe's
    name, on MLFLOW_TRACKING_URI (else MLflow's default local store). Params: the
    flattened resolved recipe; metrics by step; recipe.lock.yaml, best/ and eval reports
    as artefacts."""

    name: ClassVar[str] = "mlflow"
    module: ClassVar[str] = "mlflow"
    rewinds: ClassVar[bool] = False
    MAX_PARAMS, MAX_METRICS, MAX_VALUE = 100, 1000, 6000  # MLflow's per-call limits

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id = ""

    def start(
        self,
        run: RunDir,
        recipe: Recipe,
        previous: dict[str, Any] | None,
        resume_step: int | None,
        attach: bool,
    ) -> dict[str, Any]:
        # A server that is down costs seconds, not MLflow's default of minutes of retries
        # per call (a user's own settings win).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        MlflowClient = require("mlflow.tracking", "log.trackers: [mlflow]").MlflowClient

        self.client = MlflowClient()
        if previous is not None:  # resume or eval: the same MLflow run
            self.run_id = previous["run_id"]
            have = self.client.get_run(self.run_id).data.params
        else:
            self.run_id, have = self._create(run, recipe), {}
        if not attach:
            if previous is not None:
                self.client.update_run(self.run_id, status="RUNNING")
            # Params cannot change in MLflow: a resume adds only new keys (its changed
            # keys, e.g. train.max_steps, are in the recipe.lock.yaml artefact).
            self._params({k: v for k, v in flat_params(recipe).items() if k not in have})
            self.client.log_artifact(self.run_id, str(run.path / RECIPE_LOCK))
        return {"run_id": self.run_id, "tracking_uri": self.client.tracking_uri}

    def _create(self, run: RunDir, recipe: Recipe) -> str:
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if not experiment_id:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or recipe.name
            found = self.client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        created = self.client.create_run(
            experiment_id, run_name=run.path.name, tags={"ftc.run_dir": str(run.path.resolve())}
        )
        return created.info.run_id

    def _params(self, params: dict[str, Any]) -> None:
        Param = require("mlflow.entities", "log.trackers: [mlflow]").Param

        items = [Param(k, str(v)[: self.MAX_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), self.MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i : i + self.MAX_PARAMS])

    def log(self, step: int, points: Points, timestamp: float) -> None:
        Metric = require("mlflow.entities", "log.trackers: [mlflow]").Metric

        ms = int(timestamp * 1000)
        items = [Metric(k, v, ms, step) for k, v in points.items()]
        for i in range(0, len(items), self.MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=items[i : i + self.MAX_METRICS])

    def artifacts(self, path: Path, name: str) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), name)
        else:
            self.client.log_artifact(self.run_id, str(path), name or None)

    def summary(self, step: int | None, points: Points) -> None:
        self.log(step or 0, points, time.time())

    def close(self, status: str) -> None:
        """The MLflow run's status: FINISHED, KILLED (a signal) or FAILED; `attached`
        (eval) leaves it as it was."""
        if self.client is not None and self.run_id and status != "attached":
            state = {"complete": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            self.client.set_terminated(self.run_id, status=state)
        self.client = None


# --------------------------------------------------------------------------- W&B
class WandB:
    """A W&B run (project: WANDB_PROJECT, else the recipe's name) whose files live in
    RUN/wandb/; WANDB_MODE=offline needs no account (`wandb sync RUN/wandb/offline-run-*`
    uploads later). Config: the flattened recipe; metrics by step; files via `save`
    (linked into the W&B run, not copied)."""

    name: ClassVar[str] = "wandb"
    module: ClassVar[str] = "wandb"
    rewinds: ClassVar[bool] = False

    def __init__(self) -> None:
        self.run: Any = None

    def start(
        self,
        run: RunDir,
        recipe: Recipe,
        previous: dict[str, Any] | None,
        resume_step: int | None,
        attach: bool,
    ) -> dict[str, Any]:
        wandb = require("wandb", "log.trackers: [wandb]")

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or recipe.name,
            name=run.path.name,
            id=(previous or {}).get("id"),
            resume="allow",
            dir=str(run.path),
            settings=wandb.Settings(silent=True, console="off"),
        )
        if not attach:
            self.run.config.update(flat_params(recipe), allow_val_change=True)
            self.artifacts(run.path / RECIPE_LOCK, RECIPE_LOCK)
        return {"id": self.run.id, "project": self.run.project}

    def log(self, step: int, points: Points, timestamp: float) -> None:
        self.run.log(points, step=step)

    def artifacts(self, path: Path, name: str) -> None:
        """`path` (a file, or a dir's files) saved under `name` in the W&B run."""
        base = path
        for _ in Path(name).parts:
            base = base.parent
        pattern = str(path / "*") if path.is_dir() else str(path)
        self.run.save(pattern, base_path=str(base), policy="now")

    def summary(self, step: int | None, points: Points) -> None:
        self.run.summary.update(points)  # W&B steps only grow: final figures are a summary

    def close(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status in ("complete", "attached") else 1)
            self.run = None


def report_eval(target: Target, split: str, metrics: dict[str, Any], report: Path) -> None:
    """`ftc eval` of a run whose trackers are on: its figures (`<split>/<name>` at the
    evaluated model's step) and report files (`eval/<split>/`) go to the same tracker runs.
    Trackers never fail an evaluation (a failure is one warning)."""
    if target.run is None:
        return
    hub = Trackers.for_eval(target.run, target.recipe)
    if hub is not None:
        step = read_json(target.model_dir / MANIFEST).get("step")
        hub.log_eval(split, step if isinstance(step, int) else None, metrics, report)


REGISTRY: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoard, MLflow, WandB)}


# --------------------------------------------------------------------------- the hub
def check_installed(recipe: Recipe) -> tuple[str, ...]:
    """The recipe's trackers (default resolved); a missing one is exit 2 with the pip line,
    checked before any slow work."""
    names = recipe.log.resolved_trackers()
    if recipe.log.tensorboard:
        log.warning(
            "log.tensorboard is deprecated: write log.trackers: [%s] (same effect)",
            ", ".join(names),
        )
    for name in names:
        old_key = name == "tensorboard" and recipe.log.tensorboard and not recipe.log.trackers
        require(
            REGISTRY[name].module, "log.tensorboard: true" if old_key else f"log.trackers: {name}"
        )
    return names


def with_trackers(recipe: Recipe, names: tuple[str, ...]) -> Recipe:
    """The recipe with its tracker list explicit (what recipe.lock.yaml records)."""
    log_spec = recipe.log.model_copy(update={"trackers": names, "tensorboard": None})
    return recipe.model_copy(update={"log": log_spec})


class Trackers:
    """The run's trackers behind one sink: buffers records, commits them per checkpoint,
    keeps trackers.json, and turns any tracker failure into one warning."""

    def __init__(self, run: RunDir, recipe: Recipe, names: tuple[str, ...], doing: str) -> None:
        self.run, self.recipe, self.doing = run, recipe, doing
        self.active: dict[str, Tracker] = {n: REGISTRY[n]() for n in names}
        self.state: dict[str, dict[str, Any]] = {}
        self.pending: list[tuple[float, dict[str, Any]]] = []

    # -- training ------------------------------------------------------------------------
    @classmethod
    def for_training(cls, run: RunDir, recipe: Recipe, resume_step: int | None) -> Trackers:
        """Open the recipe's trackers for `ftc train` and attach them to the run dir: new
        tracker runs for a fresh start, the same ones on resume (points the checkpoint
        covers but a tracker lacks are replayed from metrics.jsonl)."""
        hub = cls(run, recipe, tuple(recipe.log.trackers or ()), "training")
        if resume_step is None:
            (run.path / TRACKERS).unlink(missing_ok=True)
            saved: dict[str, Any] = {}
        else:
            saved = read_json(run.path / TRACKERS)
        history = run.history() if resume_step is not None else []
        for name in list(hub.active):
            previous = saved.get(name)
            rewound = previous is not None and previous.get("step", 0) > (resume_step or 0)
            if rewound and resume_step is not None and not REGISTRY[name].rewinds:
                log.info(
                    "tracker %s holds steps up to %d, past the checkpoint's %d:"
                    " starting a new %s run",
                    name,
                    previous.get("step", 0),
                    resume_step,
                    name,
                )
                previous = None
            started = hub._call(name, "start", run, recipe, previous, resume_step, False)
            if started is False:
                continue
            given = min(previous.get("step", 0), resume_step or 0) if previous else 0
            hub.state[name] = {**started, "step": given}
            if resume_step is not None:
                missed = [(time.time(), r) for r in history if given < r.get("step", 0)]
                hub._send(name, [(t, r) for t, r in missed if r.get("step", 0) <= resume_step])
                if name in hub.active:
                    hub.state[name]["step"] = resume_step
        hub._save()
        run.tracker = hub
        if hub.active:
            log.info("trackers: %s", "; ".join(hub._describe(n) for n in hub.active))
        return hub

    def _describe(self, name: str) -> str:
        state = self.state.get(name, {})
        if name == "mlflow":
            return f"mlflow run {state.get('run_id')} at {state.get('tracking_uri')}"
        if name == "wandb":
            return f"wandb run {state.get('project')}/{state.get('id')} ({self.run.path}/wandb)"
        return f"{name} ({self.run.path / TENSORBOARD})"

    def record(self, record: dict[str, Any]) -> None:
        if self.active:
            self.pending.append((time.time(), record))

    def commit(self, step: int) -> None:
        """A checkpoint at `step` committed: hand over the points it covers."""
        ready = [(t, r) for t, r in self.pending if r.get("step", 0) <= step]
        self.pending = [(t, r) for t, r in self.pending if r.get("step", 0) > step]
        for name in list(self.active):
            self._send(name, ready)
            if name in self.active:
                self.state[name]["step"] = step
        self._save()

    def finish(self, status: str, step: int | None) -> None:
        """End of `ftc train`: a complete run commits what is left and logs best/; any other
        ending drops the uncommitted points (a resume redoes those steps)."""
        if status == "complete" and step is not None:
            self.commit(step)
            if (self.run.best / MANIFEST).is_file():
                for name in list(self.active):
                    self._call(name, "artifacts", self.run.best, BEST)
        self.close(status)

    def close(self, status: str) -> None:
        for name in list(self.active):
            self._call(name, "close", status)
        self.active.clear()
        if self.run.tracker is self:
            self.run.tracker = None

    # -- evaluation ----------------------------------------------------------------------
    @classmethod
    def for_eval(cls, run: RunDir, recipe: Recipe) -> Trackers | None:
        """The trackers a run used, attached to the same tracker runs for `ftc eval`
        (None when it had none). A tracker whose package is gone is a warning here."""
        saved = read_json(run.path / TRACKERS)
        names = tuple(n for n in (recipe.log.trackers or ()) if n in saved)
        if not names:
            return None
        hub = cls(run, recipe, names, "evaluation")
        for name in names:
            try:
                require(REGISTRY[name].module, f"log.trackers: {name}")
            except Exception as exc:  # evaluation goes on without it
                hub._warn(name, exc)
                continue
            hub._call(name, "start", run, recipe, saved[name], None, True)
        return hub

    def log_eval(self, split: str, step: int | None, metrics: dict[str, Any], report: Path) -> None:
        """`ftc eval`'s figures as `<split>/<name>` (at the evaluated model's step) and its
        report dir as the artefacts `eval/<split>/`; then detach."""
        points = {
            f"{split}/{k}": float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        for name in list(self.active):
            if self._call(name, "summary", step, points) is not False:
                self._call(name, "artifacts", report, f"eval/{report.name}")
        self.close("attached")

    # -- plumbing ------------------------------------------------------------------------
    def _send(self, name: str, records: list[tuple[float, dict[str, Any]]]) -> None:
        for stamp, record in records:
            points = points_of(record)
            if points and self._call(name, "log", record.get("step", 0), points, stamp) is False:
                return

    def _call(self, name: str, method: str, *args: Any) -> Any:
        """tracker.method(*args); on any exception one warning, and the tracker is dropped
        for the rest of this command. The result (True for None); False on failure."""
        tracker = self.active.get(name)
        if tracker is None:
            return False
        try:
            result = getattr(tracker, method)(*args)
        except Exception as exc:  # a tracker never stops training
            self._warn(name, exc)
            with contextlib.suppress(Exception):  # already reported once
                tracker.close("failed")
            return False
        return True if result is None else result

    def _warn(self, name: str, exc: BaseException) -> None:
        self.active.pop(name, None)
        self.state.pop(name, None)
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        log.warning(
            "tracker %s failed (%s: %s); %s continues without it",
            name,
            type(exc).__name__,
            first,
            self.doing,
        )

    def _save(self) -> None:
        """trackers.json: each tracker's run id and the last step it was given."""
        if self.doing == "training":
            write_json_atomic(self.run.path / TRACKERS, self.state)
