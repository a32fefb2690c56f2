"""The parity gate: the exported artefact and the torch model on the same real validation
examples. The task's own `evaluate` runs each (so the metric is the figure `ftc eval`
would report); while it runs the artefact, the torch model runs on the same batches and
the logit differences and prediction agreement are recorded."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import numpy as np
import torch

from fine_tune_cli.data.store import PreparedSplit
from fine_tune_cli.export.base import LABEL_KEYS, RunFn, RunnerModule, input_names
from fine_tune_cli.recipe import LOWER_IS_BETTER, ExportSpec


def parity_split(prepared: Any, samples: int, seed: int = 0) -> PreparedSplit:
    """A seeded random sample of `samples` validation examples (else test, else train).
    Not the first ones: splits keep the source order, which is often sorted by label."""
    split = next(
        prepared.splits[s]
        for s in ("validation", "test", "train")
        if s in prepared.splits and len(prepared.splits[s])
    )
    if samples >= len(split):
        return split
    rng = np.random.default_rng(seed)
    return subset(split, np.sort(rng.choice(len(split), samples, replace=False)))


def subset(split: PreparedSplit, index: np.ndarray) -> PreparedSplit:
    """The examples at `index` as a split of their own (arrays copied out of the mmap)."""
    rows = [np.asarray(split.example(int(i))) for i in index]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])

    def take(arr: np.ndarray) -> np.ndarray:
        if len(arr) == len(split.input_ids):  # per token, aligned with input_ids
            return np.concatenate([arr[split.offsets[i] : split.offsets[i + 1]] for i in index])
        return np.asarray(arr[index]) if len(arr) == len(split) else arr  # per example

    return PreparedSplit(
        name=split.name,
        input_ids=np.concatenate(rows) if rows else split.input_ids[:0],
        offsets=offsets,
        labels=None if split.labels is None else np.asarray(split.labels[index]),
        extra={k: take(v) for k, v in split.extra.items()},
    )


def example_batch(task: Any, split: PreparedSplit) -> dict[str, torch.Tensor]:
    """A real batch for tracing: the longest and the shortest of the first 64 examples
    (so it has padding when lengths vary; tracing keeps the mask path), inputs only."""
    lengths = split.lengths[:64]
    rows = np.array([int(np.argmax(lengths)), int(np.argmin(lengths))])
    batch = task.collate(split, rows)
    return {k: batch[k] for k in input_names(batch)}


class PairedModule(torch.nn.Module):
    """The artefact as the model under evaluation; on the very inputs the task feeds it,
    the torch model runs too and the logit differences are recorded. So differences are
    measured on exactly the batches `task.evaluate` builds, whatever the task."""

    def __init__(self, model: torch.nn.Module, run: RunFn):
        super().__init__()
        self.reference = model
        self.artefact = RunnerModule(run)
        self.diffs: list[np.ndarray] = []
        self.agree = self.count = 0

    def forward(self, **inputs: torch.Tensor) -> Any:
        out = self.artefact(**inputs)
        with torch.inference_mode():
            ref = self.reference(**{k: v for k, v in inputs.items() if k not in LABEL_KEYS})
        for i, (name, got) in enumerate(vars(out).items()):
            want, got = ref[name].float().numpy(), got.float().numpy()
            if got.shape != want.shape:
                raise AssertionError(f"artefact {name} {got.shape} vs torch {want.shape}")
            self.diffs.append(np.abs(want - got).reshape(-1))
            if i == 0:  # predictions: argmax of the main output
                same = want.argmax(-1) == got.argmax(-1)
                self.agree += int(same.sum())
                self.count += int(same.size)
        return out


def compare(
    model: torch.nn.Module, run: RunFn, task: Any, split: PreparedSplit, batch_size: int
) -> dict[str, Any]:
    """Logit differences, prediction agreement and the task metric of torch vs artefact."""
    from fine_tune_cli.evaluation.metrics import flat_metrics

    model.eval()
    # In eval mode, or task.evaluate's train(was_training) would switch the torch model
    # into train mode (dropout on) through this wrapper.
    paired = PairedModule(model, run).eval()
    cpu = torch.device("cpu")
    with torch.inference_mode():
        ref_metrics = flat_metrics(
            task.evaluate(model, split, batch_size, cpu, contextlib.nullcontext).metrics
        )
        got_metrics = flat_metrics(
            task.evaluate(paired, split, batch_size, cpu, contextlib.nullcontext).metrics
        )
    d = np.concatenate(paired.diffs)
    # The gated metric is the task's primary one (language models: the eval loss).
    metric = task.primary_metric if task.primary_metric in ref_metrics else None
    drop = 0.0
    if metric is not None:
        delta = got_metrics[metric] - ref_metrics[metric]
        drop = max(0.0, delta if metric in LOWER_IS_BETTER else -delta)
    return {
        "samples": len(split),
        "split": split.name,
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "prediction_agreement": paired.agree / max(1, paired.count),
        "metric": metric,
        "metric_torch": ref_metrics.get(metric),
        "metric_export": got_metrics.get(metric),
        "metric_drop": drop,
        "metrics_torch": _scalars(ref_metrics),
        "metrics_export": _scalars(got_metrics),
    }


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def limits(gate: str, spec: ExportSpec) -> dict[str, float]:
    """The tolerances a format is gated on (recorded in its manifest)."""
    if gate == "exact":
        return {"max_abs_diff": spec.max_abs_diff, "max_metric_drop": spec.max_metric_drop}
    if gate == "int8":
        return {
            "max_abs_diff": spec.int8_max_abs_diff,
            "min_agreement": spec.int8_min_agreement,
            "max_metric_drop": spec.max_metric_drop,
        }
    return {"max_metric_drop": spec.max_metric_drop}


def failures(parity: dict[str, Any], tolerances: dict[str, float], keys: dict[str, str]) -> list:
    """Human lines for every limit exceeded; `keys` names the recipe key of each limit."""
    out = []
    if "max_abs_diff" in tolerances and parity["max_abs_diff"] > tolerances["max_abs_diff"]:
        out.append(
            f"max |logit diff| {parity['max_abs_diff']:.3g} > {tolerances['max_abs_diff']:g}"
            f" ({keys['max_abs_diff']})"
        )
    if (
        "min_agreement" in tolerances
        and parity["prediction_agreement"] < tolerances["min_agreement"]
    ):
        out.append(
            f"prediction agreement {parity['prediction_agreement']:.4f}"
            f" < {tolerances['min_agreement']:g} ({keys['min_agreement']})"
        )
    if parity["metric_drop"] > tolerances["max_metric_drop"]:
        out.append(
            f"{parity['metric']} drop {parity['metric_drop']:.4f}"
            f" > {tolerances['max_metric_drop']:g}"
            f" ({parity['metric_torch']:.4f} -> {parity['metric_export']:.4f};"
            f" {keys['max_metric_drop']})"
        )
    return out


def latency(
    model: torch.nn.Module, run: RunFn, task: Any, split: PreparedSplit, runs: int
) -> dict[str, Any] | None:
    """Median milliseconds of one single-example forward pass, torch vs artefact."""
    if runs <= 0:
        return None
    model.eval()
    batch = task.collate(split, np.array([0]))
    inputs = {k: batch[k] for k in input_names(batch)}

    def torch_run() -> None:
        with torch.inference_mode():
            model(**inputs)

    def export_run() -> None:
        run(inputs)

    torch_ms, export_ms = _median_ms([torch_run, export_run], runs)
    return {
        "runs": runs,
        "batch_size": 1,
        "tokens": int(inputs["input_ids"].shape[-1]) if "input_ids" in inputs else None,
        "threads": torch.get_num_threads(),
        "torch_ms": torch_ms,
        "export_ms": export_ms,
    }


def _median_ms(fns: list[Any], runs: int) -> list[float]:
    """Median wall time of each function; runs interleave so that both see the same
    machine (a busy neighbour or frequency change hits both alike)."""
    for fn in fns:  # warm-up: allocator, lazy init, kernel choice
        for _ in range(min(3, runs)):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1000)
    return [round(statistics.median(t), 3) for t in times]
