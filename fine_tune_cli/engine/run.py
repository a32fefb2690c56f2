"""`ftc train` behind the CLI: run dir, data, model, optimizer, resume, then the loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from fine_tune_cli.errors import DataError, FtcError, RecipeError
from fine_tune_cli.recipe import LoadedRecipe, Recipe, dump_recipe
from fine_tune_cli.runs import (
    RECIPE_LOCK,
    RunDir,
    environment,
    now,
    read_recipe_lock,
    recipe_lock_text,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from fine_tune_cli.engine.trainer import TrainResult
    from fine_tune_cli.tasks.base import TrainingTask

log = logging.getLogger("ftc")

# Recipe keys that may change between a checkpoint and its resume; every other key under
# model/data/optim/schedule/train must match, or resume is refused listing the keys. Most
# do not change the result (names, paths, cadence of logging/eval/saving, kernels). Two
# kinds do: the run's length (train.max_steps, train.epochs), which extends or shortens
# the run, and early-stopping patience. A new length recomputes the LR schedule for it
# from the checkpoint's step on (logged), so the result is not bitwise that of an
# uninterrupted run of the new length.
RESUME_FREE = {
    "name",
    "description",
    "data.cache_dir",
    "data.source.path",  # compared by content hash instead
    "train.max_steps",  # the run's length: the LR schedule is recomputed (_resumed)
    "train.epochs",
    "train.eval_every",
    "train.save_every",
    "train.keep_last",
    "train.run_dir",
    "train.eval_batch_size",
    "train.device",
    "train.compile",
    "train.attention",  # a kernel choice, like compile
    "train.prefetch",  # collation timing only: the batches are the same
    "train.workers",
    # the optimizer kernel (fused/foreach: same update, different rounding), so a run made
    # before optim.fused existed (its lock migrates to false) resumes from its own recipe
    "optim.fused",
    "train.early_stopping.patience",
    "train.early_stopping.min_delta",
    "train.best_metric",
    "train.best_mode",
    "train.batch_size",  # compared as the global batch below
    "train.grad_accum",
    "train.distributed.strategy",
    "train.distributed.timeout_s",
    "log",
    "eval",  # what ftc eval adds to its report
    "export",
    "generate",
}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _differences(old: Recipe, new: Recipe, free: bool) -> list[str]:
    """`key (old -> new)` for each differing key in RESUME_FREE (free) or outside it."""
    from fine_tune_cli.hub import same_files

    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    changed = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or key.startswith(k + ".") for k in RESUME_FREE) != free:
            continue
        if a.get(key) != b.get(key) and not same_files(key, a.get(key), b.get(key)):
            changed.append(f"{key} ({a.get(key)!r} -> {b.get(key)!r})")
    return changed


def resume_mismatches(old: Recipe, new: Recipe, old_world: int, new_world: int) -> list[str]:
    """What resume refuses: differing keys outside RESUME_FREE, and the global batch."""
    changed = _differences(old, new, free=False)
    g_old = old.train.batch_size * old.train.grad_accum * old_world
    g_new = new.train.batch_size * new.train.grad_accum * new_world
    if g_old != g_new:
        changed.append(f"global batch ({g_old} -> {g_new})")
    return changed


def describe_model(model: torch.nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__} with {n / 1e6:.2f}M parameters"


def no_validation_message(recipe: Recipe) -> str:
    """The start-of-run warning for a run without validation data: what the user loses
    (silently, before) and how to get a validation split back."""
    if recipe.data.source.split_folders:
        how = "add a validation/ folder or set data.split.validation > 0 to carve one from train/"
    elif recipe.data.split.validation == 0:
        how = "set data.split.validation > 0"
    else:
        how = "too few examples for data.split.validation; use more data"
    patience = recipe.train.early_stopping.patience
    lost = [
        "no evaluation during training",
        "no best-checkpoint selection (best/ is the last step)",
        "no early stopping" + (" (train.early_stopping.patience is ignored)" if patience else ""),
    ]
    if recipe.schedule.name == "plateau":
        lost.append("the plateau schedule never lowers the LR")
    return f"no validation split: {', '.join(lost)}; {how}"


def _resume_point(run: RunDir, resume: str | None, is_main: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh start, checked and cleaned)."""
    from fine_tune_cli.engine import checkpoint as ckpt

    resume_from: Path | None = None
    if resume == "auto":
        resume_from = ckpt.latest_checkpoint(run.path)
        if resume_from is None:
            log.info("--resume auto: no complete checkpoint in %s; starting fresh", run.path)
    elif resume:
        resume_from = ckpt.resolve_resume(Path(resume))
    if resume_from is None and is_main:
        run.check_fresh_start(overwrite)
        run.truncate_history(0)  # lines of a killed attempt without a checkpoint
    return resume_from


def _prepared_data(recipe: Recipe, dist: Any) -> tuple[Any, bool]:
    """Rank 0 prepares (or finds the cache) first; the others then open it."""
    from fine_tune_cli.data.prepare import prepare_dataset

    if dist.is_main:
        prepared, cached = prepare_dataset(recipe)
    dist.barrier()
    if not dist.is_main:
        prepared, cached = prepare_dataset(recipe)
    if not len(prepared.splits["train"]):
        raise DataError(f"{prepared.path}: the train split is empty; nothing to train on")
    log.info(
        "data: %s (%s); %s",
        prepared.path,
        "cache hit" if cached else "prepared",
        ", ".join(f"{k} {len(v)}" for k, v in prepared.splits.items()),
    )
    valid = prepared.splits.get("validation")
    if valid is None or not len(valid):
        log.warning(no_validation_message(recipe))
    return prepared, cached


def _load_resume(
    resume_from: Path | None, recipe: Recipe, prepared: Any, world: int
) -> tuple[Any, dict[str, Any] | None]:
    """(weights, saved state) of the checkpoint; refused when the recipe or data changed."""
    from fine_tune_cli.engine import checkpoint as ckpt

    if resume_from is None:
        return None, None
    weights, saved = ckpt.load_checkpoint(resume_from)
    old = read_recipe_lock(resume_from / RECIPE_LOCK)
    changed = resume_mismatches(old, recipe, saved["world"], world)
    if saved["data_hash"] != prepared.hash:
        changed.append("data (prepared data hash differs)")
    if changed:
        raise RecipeError(
            f"--resume: {resume_from} was trained with a different recipe: " + "; ".join(changed)
        )
    # In memory only, for _train to act on and log (into train.log, opened after this).
    saved["allowed_changes"] = _differences(old, recipe, free=True)
    saved["schedule_steps"] = _schedule_steps(old, recipe, len(prepared.splits["train"]), saved)
    return weights, saved


def _schedule_steps(old: Recipe, new: Recipe, n_train: int, saved: dict[str, Any]) -> int:
    """The length the checkpoint's LR schedule was made for (train.max_steps / train.epochs
    may change on resume; _resumed recomputes the schedule). A run cannot be cut short of
    the step its checkpoint is at."""
    from fine_tune_cli.engine.trainer import total_steps

    before = total_steps(old, n_train, saved["world"])
    after = total_steps(new, n_train, saved["world"])  # the global batch is unchanged
    step = saved["trainer"]["step"]
    if after < step:
        raise RecipeError(
            f"--resume: the checkpoint is at step {step}, past the {after} steps that"
            " train.max_steps / train.epochs now give; set a length of at least"
            f" {step} steps (was {before})"
        )
    return before


def _resumed(saved: dict[str, Any], schedule: Any, steps: int, step: int) -> None:
    """Log what changed since the checkpoint (RESUME_FREE keys only: others were refused);
    for a new length, recompute the LR schedule and say the result is therefore not bitwise
    that of an uninterrupted run of that length."""
    if saved.get("allowed_changes"):
        log.info("resume: changed since the checkpoint: %s", "; ".join(saved["allowed_changes"]))
    before = saved.get("schedule_steps", steps)
    if before == steps:
        return
    _recompute_lr(schedule)
    log.info(
        "resume: run length %d -> %d steps; the LR schedule is recomputed for %d steps from"
        " step %d, so the result is not bitwise that of an uninterrupted %d-step run",
        before,
        steps,
        steps,
        step,
        steps,
    )


def _recompute_lr(schedule: Any) -> None:
    """After loading the state of a schedule made for another length: the optimizer's LRs
    as this schedule gives them at the checkpoint's step (the saved ones follow the old
    length and would drive the first step after resume)."""
    lambda_lr = schedule.lambda_lr
    groups = lambda_lr.optimizer.param_groups
    for group, base, factor in zip(groups, lambda_lr.base_lrs, lambda_lr.lr_lambdas, strict=True):
        group["lr"] = base * factor(lambda_lr.last_epoch)


def _early_stop_lifted(recipe: Recipe, state: Any) -> None:
    """A checkpoint that stopped early continues when the resume's patience (raised, or
    off) is no longer reached by its evals without improvement."""
    patience = recipe.train.early_stopping.patience
    if not state.stopped_early or (patience and state.bad_evals >= patience):
        return
    state.stopped_early = False
    log.info(
        "resume: the checkpoint stopped early after %d evals without improvement; with"
        " train.early_stopping.patience %s training continues",
        state.bad_evals,
        patience,
    )


def _start_provenance(
    loaded: LoadedRecipe, prepared: Any, cached: bool, device: Any, world: int, resumed: Any
) -> dict[str, Any]:
    from fine_tune_cli.hub import provenance as hub_provenance

    recipe = loaded.recipe
    return {
        "status": "running",
        "started": now(),
        "recipe_source": loaded.source,
        "overrides": list(loaded.overrides),
        "data": {"hash": prepared.hash, "path": str(prepared.path), "cache_hit": cached},
        "hub": hub_provenance(recipe),  # Hub ids -> resolved commit sha + snapshot dir
        "device": str(device),
        "precision": recipe.train.precision,
        "world_size": world,
        "resumed_from": str(resumed) if resumed else None,
        "environment": environment(),
    }


def _model(
    recipe: Recipe, prepared: Any, weights: Any, resume_from: Path | None, device: Any, dist: Any
) -> torch.nn.Module:
    """The family x task model, initialised or restored, on the device and wrapped."""
    from fine_tune_cli.engine import checkpoint as ckpt
    from fine_tune_cli.models.registry import build_model, load_info_lines
    from fine_tune_cli.tasks import task_for

    ctx = task_for(recipe.model).build_context(recipe, prepared)
    model = build_model(recipe.model, ctx)
    if recipe.train.attention != "auto":
        try:
            model.set_attn_implementation(recipe.train.attention)
        except (ValueError, ImportError) as exc:
            raise RecipeError(f"train.attention: {recipe.train.attention}: {exc}") from None
    log.info("model: %s", describe_model(model))
    if ctx.init_dir is not None:
        log.info("initialised from %s", ctx.init_dir)
        for line in load_info_lines(getattr(model, "ftc_loading_info", {})):
            log.info("  %s", line)
    if weights is not None:
        ckpt.restore_weights(model, weights, resume_from)  # saved names may differ
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(device)
    model = dist.wrap(model, device)
    if recipe.train.compile:
        # Padded batches change width every step: one graph with a symbolic sequence
        # length instead of a recompile per width. Packed blocks and images keep static
        # shapes (dynamic=None: torch decides, static first).
        model = torch.compile(model, dynamic=True if task_for(recipe.model).pads_batches else None)
    return model


def _task(recipe: Recipe, prepared: Any, device: Any) -> TrainingTask:
    """The recipe's task, wrapped for distillation when the recipe asks for it."""
    from fine_tune_cli.tasks import task_for

    task = task_for(recipe.model).from_recipe(recipe, prepared)
    if recipe.train.distill:
        from fine_tune_cli.engine.distill import DistillationTask, load_teacher

        spec = recipe.train.distill
        teacher = load_teacher(recipe, prepared, device)
        task = DistillationTask(task, teacher, spec.temperature, spec.alpha)
    return task


def _best_saver(
    recipe: Recipe, prepared: Any, run: RunDir, model: torch.nn.Module, dist: Any
) -> Callable[[int, dict[str, float]], None]:
    """save_best for the loop: best/ as an HF model dir with its tokenizer or processor."""
    from fine_tune_cli.data.tokenizers import for_model_dir
    from fine_tune_cli.engine import checkpoint as ckpt

    recipe_yaml = dump_recipe(recipe)
    # tokenizer (model_max_length = data.max_length, for pipelines), or image processor
    processor = for_model_dir(prepared.processor, recipe.data.max_length)

    def save_best(step: int, metrics: dict[str, float]) -> None:
        """Called on every rank: under FSDP gathering the weights is a collective."""
        weights = dist.full_model_state(model)
        if not dist.is_main:
            return
        ckpt.save_model_dir(
            run.best,
            model,
            processor,
            weights,
            step=step,
            metrics=metrics,
            data_hash=prepared.hash,
            recipe=yaml.safe_load(recipe_yaml),
        )

    return save_best


def _train(
    recipe: Recipe, prepared: Any, run: RunDir, dist: Any, device: Any, precision: Any, resume: Any
) -> TrainResult:
    """Model, optimizer, schedule, state (restored on resume), then the loop."""
    from fine_tune_cli.console import Progress, set_progress_every
    from fine_tune_cli.engine.optim import Schedule, build_optimizer, load_keeping_kernel
    from fine_tune_cli.engine.runtime import runtime_switches, seed_everything, set_rng_state
    from fine_tune_cli.engine.trainer import TrainerState, Training, fit, total_steps
    from fine_tune_cli.models.registry import FAMILIES

    resume_from, weights, saved = resume
    seed_everything(recipe.train.seed)
    model = _model(recipe, prepared, weights, resume_from, device, dist)
    heads = FAMILIES.get(recipe.model.family).head_modules
    optimizer = build_optimizer(model, recipe.optim, heads)
    if dist.is_main:  # which fast paths this run took (GPU throughput depends on them)
        switches = runtime_switches(model, optimizer, recipe, device)
        write_json_atomic(run.provenance_file, run.provenance() | {"runtime": switches})
    steps = total_steps(recipe, len(prepared.splits["train"]), dist.world)
    schedule = Schedule(optimizer, recipe.schedule, steps)
    state = TrainerState()
    if saved is not None:
        load_keeping_kernel(
            optimizer, lambda: dist.load_optimizer_state(model, optimizer, saved["optimizer"])
        )
        schedule.load_state_dict(saved["schedule"])
        precision.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        state = TrainerState(**saved["trainer"])
        _early_stop_lifted(recipe, state)
        if dist.is_main:
            run.truncate_history(state.step)
        log.info("resumed from %s at step %d", resume_from, state.step)
        _resumed(saved, schedule, steps, state.step)
    task = _task(recipe, prepared, device)
    save_best = _best_saver(recipe, prepared, run, model, dist)
    set_progress_every(recipe.log.progress_every)  # validation batches report at it too
    progress = Progress(
        steps,
        every=recipe.log.progress_every,
        start=state.step,
        first_line=True,
        enabled=dist.is_main,
    )
    try:
        training = Training(
            recipe=recipe,
            model=model,
            task=task,
            train=prepared.splits["train"],
            valid=prepared.splits.get("validation"),
            optimizer=optimizer,
            schedule=schedule,
            precision=precision,
            device=device,
            run=run,
            dist=dist,
            save_best=save_best,
            progress=progress,
            extra_state={"world": dist.world, "data_hash": prepared.hash},
        )
        result = fit(training, state)
    finally:
        progress.close()
    if result.state.best_step is None:
        save_best(result.state.step, {})  # no validation split: the last model is best
    return result


def run_training(loaded: LoadedRecipe, *, resume: str | None, overwrite: bool) -> dict[str, Any]:
    from fine_tune_cli.console import add_log_file
    from fine_tune_cli.engine.distributed import Dist
    from fine_tune_cli.engine.runtime import Precision, pick_device
    from fine_tune_cli.trackers import Trackers, check_installed, with_trackers

    # a missing tracker is exit 2 before any slow work; the lock records the resolved list
    recipe = with_trackers(loaded.recipe, check_installed(loaded.recipe))
    dist = Dist(recipe.train.distributed.strategy, recipe.train.distributed.timeout_s)
    device = pick_device(recipe.train.device)
    precision = Precision(recipe.train.precision, device, sharded=dist.sharded)
    dist.init(device)
    run = RunDir(recipe.run_dir())
    started = time.time()
    handler = None
    owns_provenance = False  # only a run this call started may have its status changed
    trackers: Trackers | None = None
    if dist.is_main:
        run.acquire()
    try:
        resume_from = _resume_point(run, resume, dist.is_main, overwrite)
        prepared, cached = _prepared_data(recipe, dist)
        weights, saved = _load_resume(resume_from, recipe, prepared, dist.world)
        if dist.is_main:
            write_text_atomic(run.path / RECIPE_LOCK, recipe_lock_text(recipe))
            handler = add_log_file(run.path / "train.log")
            provenance = _start_provenance(
                loaded, prepared, cached, device, dist.world, resume_from
            )
            write_json_atomic(run.provenance_file, provenance)
            owns_provenance = True
            trackers = Trackers.for_training(
                run, recipe, saved["trainer"]["step"] if saved else None
            )
        result = _train(
            recipe, prepared, run, dist, device, precision, (resume_from, weights, saved)
        )
        summary = {
            "steps": result.state.step,
            "epochs": result.state.epoch,
            "best_step": result.state.best_step or result.state.step,
            "stopped_early": result.state.stopped_early,
            "seconds": round(time.time() - started, 2),
        }
        if dist.is_main:
            write_json_atomic(
                run.provenance_file,
                run.provenance() | {"status": "complete", "finished": now(), "summary": summary},
            )
        log.info(
            "done: %d steps in %.1fs; best step %s",
            summary["steps"],
            summary["seconds"],
            summary["best_step"],
        )
        if trackers is not None:
            trackers.finish("complete", result.state.step)
        metrics = {**result.state.last_eval, "best_step": summary["best_step"]}
        return {"run_dir": str(run.path), "metrics": metrics, **summary}
    except FtcError as exc:
        if owns_provenance:
            write_json_atomic(
                run.provenance_file,
                run.provenance() | {"status": exc.status, "finished": now(), "error": exc.message},
            )
        if trackers is not None:
            trackers.finish(exc.status, None)
        raise
    finally:
        if trackers is not None:
            trackers.close("failed")  # a bug or Ctrl-C outside the loop (no-op once closed)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        run.release()
        dist.close()
