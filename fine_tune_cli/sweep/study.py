"""The sweep driver: one Optuna study in SQLite, trials as `ftc train` subprocesses.

Only this process talks to the study (ask/tell): SQLite takes one writer, and a trial is
an ordinary training run that knows nothing of Optuna. The driver follows each trial's
metrics.jsonl as it grows, reports every validation eval to the study (step = the eval's
index, so trials with different batch sizes still line up) and stops a trial the pruner
rejects with SIGTERM (the trainer saves and exits 143). A sweep killed outright leaves its
trials RUNNING in the study; `--resume` marks them failed and queues their parameters
again, so finished trials are never redone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fine_tune_cli.errors import ConflictError, FtcError, Interrupted, RecipeError
from fine_tune_cli.optional import require
from fine_tune_cli.recipe.load import get_dotted
from fine_tune_cli.runs import CHECKPOINTS, LOCK, METRICS, RunDir, read_json, write_json_atomic
from fine_tune_cli.sweep.space import Space, SpaceFile

if TYPE_CHECKING:
    import optuna

    from fine_tune_cli.recipe import LoadedRecipe

log = logging.getLogger("ftc")

STUDY_DB = "study.db"
SWEEP_JSON = "sweep.json"  # what the sweep searches: --resume must search the same
SPACE_COPY = "space.yaml"
POLL_S = 1.0


def trial_dir_name(number: int) -> str:
    return f"trial-{number:03d}"


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / STUDY_DB).resolve()}"


@dataclass
class SweepPlan:
    """Everything `ftc sweep` was asked to do."""

    loaded: LoadedRecipe
    space: Space
    overrides: list[str]
    out: Path
    trials: int
    parallel: int
    resume: bool

    @property
    def spec(self) -> SpaceFile:
        return self.space.spec

    @property
    def study_name(self) -> str:
        return self.loaded.recipe.name


@dataclass
class RunningTrial:
    """A trial process and how far its metrics.jsonl has been read."""

    trial: optuna.Trial
    run_dir: Path
    proc: subprocess.Popen[bytes]
    files: list[IO[bytes]]
    started: float = field(default_factory=time.time)
    offset: int = 0
    evals: list[float] = field(default_factory=list)
    pruned_at: int | None = None


# --------------------------------------------------------------------------- the study
def open_study(plan: SweepPlan) -> optuna.Study:
    """The study in SWEEP_DIR/study.db (created, or loaded to resume)."""
    optuna = require("optuna", "ftc sweep")

    spec = plan.spec
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=plan.study_name,
        storage=storage_url(plan.out),
        direction=spec.direction,
        sampler=_sampler(spec, plan.trials, plan.parallel),
        pruner=_pruner(spec),
        load_if_exists=True,
    )


def _sampler(spec: SpaceFile, trials: int, parallel: int) -> optuna.samplers.BaseSampler:
    optuna = require("optuna", "ftc sweep")

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.sampler == "grid":
        grid = {key: dist.grid() for key, dist in spec.space.items()}
        return _ask_tell_grid()(grid, seed=spec.seed)
    # TPE models the results once a few random trials exist: a third of the budget,
    # between 2 and Optuna's default 10, so short sweeps still get modelled proposals.
    return optuna.samplers.TPESampler(
        seed=spec.seed,
        n_startup_trials=max(2, min(10, trials // 3)),
        constant_liar=parallel > 1,  # running trials count as bad: no duplicate proposals
    )


def _ask_tell_grid() -> type[optuna.samplers.GridSampler]:
    """GridSampler without its study.stop() (it raises outside study.optimize); the
    driver asks `is_exhausted` itself before each new trial."""
    optuna = require("optuna", "ftc sweep")

    class AskTellGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            return None

    return AskTellGridSampler


def _pruner(spec: SpaceFile) -> optuna.pruners.BasePruner:
    optuna = require("optuna", "ftc sweep")

    if spec.pruner.name == "none":
        return optuna.pruners.NopPruner()
    # Steps are eval indices from 1: evals 1..warmup_evals are never pruned.
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.pruner.startup_trials,
        n_warmup_steps=spec.pruner.warmup_evals + 1,
    )


def enqueue_recipe_values(study: optuna.Study, plan: SweepPlan) -> None:
    """Trial 0: the recipe's own values (a key whose value the space cannot hold keeps
    the recipe's value and is simply not a parameter of that trial)."""
    resolved = plan.loaded.recipe.resolved()
    fixed = {}
    for key, dist in plan.spec.space.items():
        value = get_dotted(resolved, key)
        if not dist.contains(value):
            log.info(
                "trial 0 keeps the recipe's %s=%r, which %s cannot hold",
                key,
                value,
                dist.describe(),
            )
            continue
        fixed[key] = value
        if dist.kind != "choice" and not _within(dist, value):
            log.info("trial 0: the recipe's %s=%r lies outside %s", key, value, dist.describe())
    study.enqueue_trial(fixed, user_attrs={"recipe_values": True, "fixed_keys": list(fixed)})


def _within(dist: Any, value: float) -> bool:
    lo, hi = dist.endpoints()
    return bool(lo <= value <= hi)


def requeue_killed(study: optuna.Study) -> list[int]:
    """Trials a dead sweep left RUNNING: queue their parameters again, then mark them
    failed (in that order: a kill in between leaves nothing lost, and a second resume
    sees the queued rerun and does not queue it twice)."""
    TrialState = require("optuna.trial", "ftc sweep").TrialState

    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get("rerun_of") for t in trials}
    killed = [t for t in trials if t.state == TrialState.RUNNING]
    for t in killed:
        if t.number not in queued:
            requeue(study, t)
        study.tell(t.number, state=TrialState.FAIL)
        if t.user_attrs.get("run_dir"):  # its last checkpoint is of no use to the rerun
            shutil.rmtree(Path(t.user_attrs["run_dir"]) / CHECKPOINTS, ignore_errors=True)
    return [t.number for t in killed]


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a trial's parameters again; the rerun points back at it (`rerun_of`)."""
    attrs: dict[str, Any] = {"rerun_of": trial.number, "fixed_keys": list(trial.params)}
    if trial.user_attrs.get("recipe_values"):
        attrs["recipe_values"] = True
    study.enqueue_trial(trial.params, user_attrs=attrs)


def superseded(study: optuna.Study) -> dict[int, int]:
    """Killed trial number -> the number of the trial that reruns it."""
    return {
        t.user_attrs["rerun_of"]: t.number
        for t in study.get_trials(deepcopy=False)
        if isinstance(t.user_attrs.get("rerun_of"), int)
    }


def finished_count(study: optuna.Study) -> int:
    """Trials that used up budget: finished and not killed-then-rerun."""
    rerun = superseded(study)
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and t.number not in rerun
    )


def suggest(trial: optuna.Trial, spec: SpaceFile) -> dict[str, Any]:
    """The trial's values of the space keys (a queued trial's fixed keys only)."""
    keys = trial.user_attrs.get("fixed_keys")
    params = {}
    for key, dist in spec.space.items():
        if keys is not None and key not in keys:
            continue
        if dist.log_uniform is not None:
            params[key] = trial.suggest_float(key, *dist.log_uniform, log=True)
        elif dist.uniform is not None:
            params[key] = trial.suggest_float(key, *dist.uniform)
        elif dist.int is not None:
            params[key] = trial.suggest_int(key, *dist.int)
        else:
            assert dist.choice is not None
            params[key] = trial.suggest_categorical(key, list(dist.choice))  # type: ignore[arg-type]
    return params


# --------------------------------------------------------------------------- sweep dir
def sweep_identity(plan: SweepPlan) -> dict[str, Any]:
    """What must not change between a sweep and its --resume."""
    spec = plan.spec.model_dump(mode="json", exclude={"trials", "timeout"})
    return {"recipe": plan.loaded.source, "overrides": plan.overrides, **spec}


def prepare_sweep_dir(plan: SweepPlan) -> bool:
    """Create or check SWEEP_DIR; True when a study is there to resume."""
    out = plan.out
    has_study = (out / STUDY_DB).is_file()
    if has_study and not plan.resume:
        raise ConflictError(
            f"{out}: holds a sweep; pass --resume to continue it, or --out a new directory"
        )
    others = [p for p in out.iterdir() if p.name != LOCK] if out.is_dir() else []
    if not has_study and others and not plan.resume:
        raise ConflictError(f"{out}: not empty and holds no sweep; pass --out a new directory")
    if plan.resume and not has_study:
        log.info("--resume: no sweep in %s; starting a new one", out)
    if has_study:
        saved = read_json(out / SWEEP_JSON)
        now = sweep_identity(plan)
        changed = sorted(k for k in now.keys() | saved.keys() if now.get(k) != saved.get(k))
        if changed:
            raise RecipeError(
                f"{out}: --resume with a different {', '.join(changed)} than the sweep was"
                f" started with ({out / SWEEP_JSON}); use --out for a new sweep"
            )
        return True
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SWEEP_JSON, sweep_identity(plan))
    tmp = out / f".{SPACE_COPY}.tmp"
    tmp.write_text(plan.space.text, encoding="utf-8")
    os.replace(tmp, out / SPACE_COPY)
    return False


# --------------------------------------------------------------------------- trials
def trial_overrides(plan: SweepPlan, params: dict[str, Any], run_dir: Path) -> list[str]:
    """The trial's recipe: the user's overrides, its parameters, its run dir, and best/
    chosen by the sweep's metric (so the trial's value and its best/ agree)."""
    mode = plan.spec.best_mode()
    return [
        *plan.overrides,
        *(f"{key}={json.dumps(value)}" for key, value in params.items()),
        f"train.run_dir={run_dir}",
        f"train.best_metric={plan.spec.metric}",
        f"train.best_mode={mode}",
    ]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the sweep dies (even by SIGKILL), so no orphan trial
    keeps training; it saves a checkpoint and exits like any interrupted run."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch(
    plan: SweepPlan, trial: optuna.Trial, params: dict[str, Any], threads: int
) -> RunningTrial:
    """`ftc train RECIPE <overrides> --json` with its run dir SWEEP_DIR/trial-NNN."""
    run_dir = plan.out / trial_dir_name(trial.number)
    run_dir.mkdir(parents=True, exist_ok=True)
    args = trial_overrides(plan, params, run_dir)
    cmd = [sys.executable, "-m", "fine_tune_cli", "train", plan.loaded.source, *args, "--json"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    stdout = open(run_dir / "trial.stdout", "wb")  # noqa: SIM115 (closed when it ends)
    stderr = open(run_dir / "trial.stderr", "wb")  # noqa: SIM115
    linux = sys.platform.startswith("linux")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        preexec_fn=_die_with_parent if linux else None,
    )
    trial.set_user_attr("run_dir", str(run_dir))
    shown = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
    log.info("trial %d started: %s", trial.number, shown or "(the recipe's own values)")
    return RunningTrial(trial, run_dir, proc, [stdout, stderr])


def follow(running: RunningTrial, spec: SpaceFile) -> None:
    """Report the validation evals the trial logged since the last look; prune it when
    the pruner says so (SIGTERM: the trainer stops after this step)."""
    path = running.run_dir / METRICS
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        fh.seek(running.offset)
        chunk = fh.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
    running.offset += len(complete)
    key = f"eval_{spec.metric}"
    for line in complete.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("split") != "validation" or not isinstance(record.get(key), int | float):
            continue
        running.evals.append(float(record[key]))
        step = len(running.evals)
        running.trial.report(float(record[key]), step)
        if running.pruned_at is None and running.trial.should_prune():
            running.pruned_at = step
            running.proc.send_signal(signal.SIGTERM)
            log.info(
                "trial %d pruned at eval %d (%s %.4f trails the median)",
                running.trial.number,
                step,
                spec.metric,
                record[key],
            )


def _trial_error(running: RunningTrial) -> str:
    """The trial's one-line error (its --json message, else its last stderr line)."""
    result = _json_line(running.run_dir / "trial.stdout")
    if result.get("message"):
        return str(result["message"]).splitlines()[0]
    try:
        lines = (running.run_dir / "trial.stderr").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    return next((line for line in reversed(lines) if line.strip()), "no output")


def _json_line(path: Path) -> dict[str, Any]:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def finish(study: optuna.Study, running: RunningTrial, spec: SpaceFile) -> tuple[str, int]:
    """Tell the study how the ended trial did; drop its checkpoints (best/ and metrics
    stay). Returns (state, exit code)."""
    TrialState = require("optuna.trial", "ftc sweep").TrialState

    code = running.proc.wait()
    for fh in running.files:
        fh.close()
    follow(running, spec)
    trial = running.trial
    trial.set_user_attr("exit_code", code)
    trial.set_user_attr("seconds", round(time.time() - running.started, 1))
    trial.set_user_attr("evals", len(running.evals))
    shutil.rmtree(running.run_dir / CHECKPOINTS, ignore_errors=True)
    if running.pruned_at is not None:
        trial.set_user_attr("pruned_at_eval", running.pruned_at)
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned", code
    if code == 0 and running.evals:
        best = max(running.evals) if spec.direction == "maximize" else min(running.evals)
        study.tell(trial, best)
        log.info("trial %d finished: %s %.4f", trial.number, spec.metric, best)
        return "complete", code
    if code:
        error = _trial_error(running)
    else:  # trained, but nothing to score it by: a recipe problem (exit 2)
        code = 2
        trial.set_user_attr("exit_code", code)
        error = (
            f"no validation eval logged {spec.metric}; a sweep needs a validation split"
            " (data.split.validation > 0)"
        )
    trial.set_user_attr("error", error)
    study.tell(trial, state=TrialState.FAIL)
    log.info("trial %d failed (exit %d): %s", trial.number, code, error)
    return "failed", code


# --------------------------------------------------------------------------- the loop
class _Signals:
    """SIGINT/SIGTERM stop the sweep: trials are stopped (they checkpoint), their study
    entries stay RUNNING, and --resume reruns them."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run_sweep(plan: SweepPlan) -> optuna.Study:
    """Run (or resume) the sweep until the budget, the timeout or the grid is spent."""
    require("optuna", "ftc sweep")
    lock = RunDir(plan.out)
    plan.out.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    try:
        resumed = prepare_sweep_dir(plan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental/out-of-range notes
            study = open_study(plan)
            if resumed:
                killed = requeue_killed(study)
                if killed:
                    log.info(
                        "--resume: trials %s were killed with the sweep; rerunning them", killed
                    )
            if not study.get_trials(deepcopy=False):
                enqueue_recipe_values(study, plan)
            _loop(study, plan)
        return study
    finally:
        lock.release()


def _loop(study: optuna.Study, plan: SweepPlan) -> None:
    started = time.time()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // plan.parallel)
    running: list[RunningTrial] = []
    with _Signals() as signals:
        try:
            _drive(study, plan, running, signals, started, threads)
        finally:
            _stop_all(running)  # an error or a signal: no trial keeps running


def _drive(
    study: optuna.Study,
    plan: SweepPlan,
    running: list[RunningTrial],
    signals: _Signals,
    started: float,
    threads: int,
) -> None:
    """Start trials while budget, time and grid allow; follow them until all ended."""
    timeout = plan.spec.timeout
    out_of_time = False
    while True:
        out_of_time = timeout is not None and time.time() - started > timeout
        while (
            signals.signum is None
            and not out_of_time
            and len(running) < plan.parallel
            and finished_count(study) + len(running) < plan.trials
            and not _grid_done(study)
        ):
            trial = study.ask()
            params = suggest(trial, plan.spec)
            running.append(launch(plan, trial, params, threads))
        if not running:
            break
        time.sleep(POLL_S)
        if signals.signum is not None:
            raise Interrupted(
                f"sweep interrupted; {len(running)} running trial(s) stopped"
                f" (continue with: ftc sweep ... --out {plan.out} --resume)",
                signals.signum,
            )
        for r in list(running):
            follow(r, plan.spec)
            if r.proc.poll() is not None:
                running.remove(r)
                state, code = finish(study, r, plan.spec)
                _check_recipe_trial(study, r, state, code)
    if out_of_time:
        log.info("timeout: %.0fs passed; no new trials started", timeout)


def _grid_done(study: optuna.Study) -> bool:
    TrialState = require("optuna.trial", "ftc sweep").TrialState

    sampler = study.sampler
    if not hasattr(sampler, "is_exhausted"):
        return False
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return not waiting and bool(sampler.is_exhausted(study))


def _check_recipe_trial(study: optuna.Study, running: RunningTrial, state: str, code: int) -> None:
    """The recipe's own values failing on a recipe or data error means every trial
    would: stop the sweep with that error instead of burning the budget. The trial is
    queued again, so a --resume after the fix runs it first."""
    if state == "failed" and code in (2, 3) and running.trial.user_attrs.get("recipe_values"):
        requeue(study, study.get_trials(deepcopy=False)[running.trial.number])
        error = FtcError(
            f"trial {running.trial.number} (the recipe's own values) failed:"
            f" {running.trial.user_attrs.get('error', '')} (see {running.run_dir}/trial.stderr)"
        )
        error.exit_code = code
        raise error


def _stop_all(running: list[RunningTrial]) -> None:
    """SIGTERM every trial and wait: each saves a checkpoint and exits."""
    for r in running:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    for r in running:
        try:
            r.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()
        for fh in r.files:
            fh.close()
