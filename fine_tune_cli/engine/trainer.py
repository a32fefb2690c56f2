"""The training loop: one function. Accumulation, precision, clipping, schedule, eval
cadence, best/last checkpoints, early stopping, exact resume, signals, NaN guard.

Runtime concerns (precision, checkpoints, distributed) live in their own modules; the
task (loss, batching, evaluation) comes in as an argument.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from fine_tune_cli.data.batching import step_groups, train_order
from fine_tune_cli.data.prefetch import Feed
from fine_tune_cli.data.store import PreparedSplit
from fine_tune_cli.engine import checkpoint as ckpt
from fine_tune_cli.engine.distributed import Dist
from fine_tune_cli.engine.flops import ModelShape, batch_flops, model_shape, peak_flops
from fine_tune_cli.engine.optim import Schedule
from fine_tune_cli.engine.runtime import Precision, collate_workers, rng_state, to_device
from fine_tune_cli.errors import DivergedError, Interrupted, RecipeError
from fine_tune_cli.evaluation.metrics import flat_metrics
from fine_tune_cli.recipe import Recipe
from fine_tune_cli.runs import RECIPE_LOCK, RunDir

if TYPE_CHECKING:
    from fine_tune_cli.tasks.base import TrainingTask

log = logging.getLogger("ftc")


@dataclass
class TrainerState:
    """Everything about progress that a checkpoint must restore (besides tensors)."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps of the current epoch already done
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    bad_steps: int = 0
    stopped_early: bool = False
    last_eval: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    state: TrainerState
    total_steps: int
    seconds: float


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits 143/130."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum
        log.warning(
            "received %s: finishing this step and saving a checkpoint", signal.Signals(signum).name
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def total_steps(recipe: Recipe, n_train: int, world: int) -> int:
    spec = recipe.train
    per_epoch = math.ceil(math.ceil(n_train / (spec.batch_size * world)) / spec.grad_accum)
    return spec.max_steps or spec.epochs * per_epoch


class ProgressLike(Protocol):
    def update(
        self,
        completed: int,
        *,
        fields: dict[str, Any] | None = None,
        counts: dict[str, float] | None = None,
    ) -> None: ...


@dataclass
class Training:
    """What one `fit` call trains with (engine/run.py builds it): one typed value instead
    of fifteen keyword arguments."""

    recipe: Recipe
    model: torch.nn.Module
    task: TrainingTask
    train: PreparedSplit
    valid: PreparedSplit | None
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    precision: Precision
    device: torch.device
    run: RunDir
    dist: Dist
    save_best: Callable[[int, dict[str, float]], None]  # every rank calls it (FSDP gathers)
    progress: ProgressLike
    extra_state: dict[str, Any]  # stored in every checkpoint (world size, data hash)


@dataclass(frozen=True)
class Faults:
    """Fault injection for tests: a NaN loss at step N; rank R exiting at step N ("R:N")."""

    nan_at: int = 0
    exit_rank: tuple[int, ...] | None = None

    @classmethod
    def from_env(cls) -> Faults:
        rank_fault = os.environ.get("FTC_FAULT_EXIT_RANK", "")
        return cls(
            nan_at=int(os.environ.get("FTC_FAULT_NAN_STEP", "0")),
            exit_rank=tuple(int(x) for x in rank_fault.split(":")) if rank_fault else None,
        )


def _forward_backward(
    t: Training, state: TrainerState, batches: list[dict[str, torch.Tensor]], faults: Faults
) -> float:
    """Backward over the step's micro-batches; the step's loss (averaged over ranks)."""
    dist, task = t.dist, t.task
    units = dist.sum(sum(task.units(b) for b in batches))
    step_loss = torch.zeros((), device=t.device)
    for i, batch in enumerate(batches):
        # Each micro-batch's mean loss, weighted by its share of the step, so k
        # micro-batches of b equal one batch of k*b (and DDP averages ranks).
        with dist.no_sync(t.model, last=i == len(batches) - 1), t.precision.autocast():
            loss = task.loss(t.model, batch) * (task.units(batch) * dist.world / units)
        if faults.nan_at and state.step + 1 == faults.nan_at:
            loss = loss * float("nan")
        if dist.world > 1 and faults.exit_rank == (dist.rank, state.step + 1):
            os._exit(1)  # fault injection for tests: a rank dies mid-run
        t.precision.backward(loss)
        step_loss += loss.detach()
    return dist.sum(float(step_loss)) / dist.world


def _apply_update(
    t: Training, state: TrainerState, loss_value: float, last_ckpt: Path | None
) -> float:
    """Optimizer and schedule step; a non-finite loss skips the batch (up to
    train.max_bad_steps, then the run stops as diverged). Returns the gradient norm."""
    spec = t.recipe.train
    if not math.isfinite(loss_value):
        state.bad_steps += 1
        t.optimizer.zero_grad(set_to_none=True)
        if state.bad_steps > spec.max_bad_steps:
            raise DivergedError(
                f"non-finite loss at step {state.step}; last good checkpoint:"
                f" {last_ckpt or 'none'} (lower optim.lr, set train.clip_grad_norm,"
                " or allow skips with train.max_bad_steps)"
            )
        log.warning("non-finite loss at step %d: batch skipped", state.step)
        return float("nan")
    params = [p for p in t.model.parameters() if p.requires_grad]
    t.precision.unscale(t.optimizer)
    grad_norm = t.dist.clip_grad_norm(params, spec.clip_grad_norm or float("inf"))
    t.precision.step(t.optimizer)
    t.optimizer.zero_grad(set_to_none=True)
    t.schedule.step()
    return grad_norm


@dataclass(frozen=True)
class Telemetry:
    """The FLOPs shape of the model and the device's peak (None off CUDA): MFU."""

    shape: ModelShape | None
    peak: float | None

    @classmethod
    def of(cls, model: torch.nn.Module, device: torch.device) -> Telemetry:
        inner = ckpt.unwrap(model)
        shape = model_shape(inner) if getattr(inner, "config", None) is not None else None
        return cls(shape, peak_flops(device))


def _log_step(
    t: Training,
    state: TrainerState,
    group: list[np.ndarray],
    batches: list[dict[str, torch.Tensor]],
    numbers: dict[str, float],
    telemetry: Telemetry,
) -> None:
    """One metrics.jsonl line. The sums are collectives: every rank joins, rank 0 writes.
    `mfu` only where the peak is known (CUDA): a CPU has no meaningful bf16 peak."""
    samples = t.dist.sum(sum(len(i) for i in group))
    counts = [t.task.tokens(b) for b in batches]
    tokens = t.dist.sum(sum(counts))
    mfu = None
    if telemetry.shape is not None and telemetry.peak:
        flops = sum(
            batch_flops(telemetry.shape, b, n) for b, n in zip(batches, counts, strict=True)
        )
        mfu = t.dist.sum(flops) / numbers["step_time"] / (telemetry.peak * t.dist.world)
    if t.dist.is_main:
        step_time = numbers["step_time"]
        t.run.log_metrics(
            {
                "step": state.step,
                "epoch": state.epoch,
                "loss": numbers["loss"],
                "lr": t.schedule.last_lr(),
                "grad_norm": numbers["grad_norm"],
                "samples_per_s": samples / step_time,
                "tokens_per_s": tokens / step_time,
                "step_time": step_time,
                "data_wait": numbers["data_wait"],
            }
            | ({"mfu": mfu} if mfu is not None else {})
        )


def _evaluate(t: Training, state: TrainerState) -> dict[str, float]:
    """Validation metrics (flat), logged as eval_* lines."""
    spec = t.recipe.train
    eval_bs = spec.eval_batch_size or 2 * spec.batch_size
    assert t.valid is not None
    result = t.task.evaluate(t.model, t.valid, eval_bs, t.device, t.precision.autocast)
    metrics = flat_metrics(result.metrics)
    if t.dist.is_main:
        t.run.log_metrics(
            {"step": state.step, "epoch": state.epoch, "split": "validation"}
            | {f"eval_{k}": v for k, v in metrics.items()}
        )
    return metrics


def _track_best(t: Training, state: TrainerState, metrics: dict[str, float]) -> None:
    """Best-model selection, the plateau schedule and early stopping on one eval."""
    spec = t.recipe.train
    mode = spec.mode()
    if spec.best_metric not in metrics:
        raise RecipeError(
            f"train.best_metric: '{spec.best_metric}' is not computed for this"
            f" task (available: {', '.join(sorted(metrics))})"
        )
    value = metrics[spec.best_metric]
    t.schedule.observe(value, mode)
    delta = spec.early_stopping.min_delta
    better = state.best_value is None or (
        value < state.best_value - delta if mode == "min" else value > state.best_value + delta
    )
    shown = " ".join(
        f"{k}={v:.4f}"
        for k, v in metrics.items()
        if k in ("loss", "accuracy", "f1_macro", "perplexity", spec.best_metric)
    )
    log.info("step %d eval: %s%s", state.step, shown, " (best)" if better else "")
    if better:
        state.best_value, state.best_step, state.bad_evals = value, state.step, 0
        t.save_best(state.step, metrics)  # every rank (FSDP gathers), rank 0 writes
    else:
        state.bad_evals += 1
        patience = spec.early_stopping.patience
        if patience and state.bad_evals >= patience:
            state.stopped_early = True
            log.info("early stopping: %d evals without improvement", patience)


def _checkpoint(t: Training, state: TrainerState, recipe_yaml: str) -> Path | None:
    """Save a resumable checkpoint. Under FSDP both gathers are collectives: every rank
    calls this, rank 0 writes (and gets the path)."""
    weights = t.dist.full_model_state(t.model)
    optimizer_state = t.dist.optimizer_state(t.model, t.optimizer)
    if not t.dist.is_main:
        return None
    payload = {
        "optimizer": optimizer_state,
        "schedule": t.schedule.state_dict(),
        "scaler": t.precision.state_dict(),
        "rng": rng_state(),
        "trainer": asdict(state),
        **t.extra_state,
    }
    path = ckpt.save_checkpoint(
        t.run.path, state.step, t.model, payload, recipe_yaml, t.recipe.train.keep_last, weights
    )
    t.run.checkpoint_committed(state.step)  # trackers get the points this checkpoint covers
    return path


def _feed(t: Training) -> Feed[dict[str, torch.Tensor]]:
    def build(epoch: int, indices: np.ndarray) -> dict[str, torch.Tensor]:
        t.task.set_epoch(epoch)  # a no-op in the main process; sets it in a worker
        return t.task.collate(t.train, indices)

    workers = collate_workers(t.recipe)
    if t.recipe.train.workers not in ("auto", workers):  # asked for processes, no fork
        log.warning("train.workers needs fork, which this OS lacks: collating in a thread")
    return Feed(build, t.recipe.train.prefetch, workers)


def fit(t: Training, state: TrainerState) -> TrainResult:
    """Train from `state` to the recipe's last step (or early stop / a signal)."""
    spec = t.recipe.train
    recipe_yaml = (t.run.path / RECIPE_LOCK).read_text()
    steps_total = total_steps(t.recipe, len(t.train), t.dist.world)
    faults = Faults.from_env()
    started = time.time()
    last_ckpt: Path | None = ckpt.latest_checkpoint(t.run.path)
    telemetry = Telemetry.of(t.model, t.device)
    t.model.train()
    with StopFlag() as stop, _feed(t) as feed:
        while state.step < steps_total and not state.stopped_early:
            t.task.set_epoch(state.epoch)  # on-the-fly augmentation is seeded per epoch
            order = train_order(
                t.train,
                t.task.pads_batches,
                spec.batching,
                spec.seed,
                state.epoch,
                spec.batch_size * t.dist.world,  # grouped per global batch; shard splits it
            )
            groups = step_groups(t.dist.shard(order), spec.batch_size, spec.grad_accum)
            for group, host_batches in feed.epoch(state.epoch, groups[state.step_in_epoch :]):
                t0 = time.perf_counter() - feed.last_wait  # the step starts with the wait
                batches = [to_device(b, t.device) for b in host_batches]
                data_wait = time.perf_counter() - t0
                loss_value = _forward_backward(t, state, batches, faults)
                state.step += 1
                state.step_in_epoch += 1
                epoch_done = state.step_in_epoch == len(groups)
                grad_norm = _apply_update(t, state, loss_value, last_ckpt)
                if epoch_done:
                    state.epoch += 1
                    state.step_in_epoch = 0
                numbers = {
                    "loss": loss_value,
                    "grad_norm": grad_norm,
                    "data_wait": data_wait,
                    "step_time": time.perf_counter() - t0,
                }
                if state.step % t.recipe.log.every == 0 or state.step == 1:
                    _log_step(t, state, group, batches, numbers, telemetry)
                t.progress.update(
                    state.step,
                    fields={
                        "epoch": state.epoch + (1 if state.step_in_epoch else 0),
                        "loss": f"{loss_value:.4f}",
                        "lr": f"{t.schedule.last_lr():.1e}",
                    },
                    counts={"samples": sum(len(i) for i in group) * t.dist.world},
                )
                final = state.step >= steps_total
                due_eval = (spec.eval_every == "epoch" and epoch_done) or (
                    isinstance(spec.eval_every, int) and state.step % spec.eval_every == 0
                )
                evaluated = False
                if t.valid is not None and len(t.valid) and (due_eval or final):
                    state.last_eval = _evaluate(t, state)
                    evaluated = True
                    _track_best(t, state, state.last_eval)
                due_save = (spec.save_every and state.step % spec.save_every == 0) or (
                    spec.save_every is None and evaluated
                )
                if due_save or final or state.stopped_early or stop.signum:
                    last_ckpt = _checkpoint(t, state, recipe_yaml) or last_ckpt
                    t.dist.barrier()
                if stop.signum:
                    raise Interrupted(
                        f"interrupted at step {state.step}; checkpoint saved: {last_ckpt}"
                        f" (continue with --resume auto)",
                        stop.signum,
                    )
                if final or state.stopped_early:
                    break
    return TrainResult(state=state, total_steps=steps_total, seconds=time.time() - started)
