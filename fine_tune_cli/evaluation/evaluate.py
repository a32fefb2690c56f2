"""`ftc eval`: evaluate a run's best (or a checkpoint's) model on a split or a new file,
write metrics.json + report, compare with another run, and gate on --fail-under."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_tune_cli.errors import DataError, GateError, RecipeError
from fine_tune_cli.evaluation.metrics import flat_metrics
from fine_tune_cli.recipe import LOWER_IS_BETTER
from fine_tune_cli.targets import Target, eval_dir, load_model, prepared_for, resolve_target

log = logging.getLogger("ftc")


def parse_gates(items: list[str]) -> dict[str, float]:
    gates = {}
    for item in items:
        match = re.fullmatch(r"\s*([a-z_0-9]+)\s*=\s*([-+0-9.eE]+)\s*", item)
        if not match:
            raise RecipeError(f"--fail-under '{item}': expected METRIC=VALUE, e.g. accuracy=0.9")
        gates[match.group(1)] = float(match.group(2))
    return gates


@dataclass
class Evaluation:
    """One evaluated model: its metrics and what the report needs besides them."""

    target: Target
    split: str
    metrics: dict[str, Any]
    details: dict[str, Any]
    texts: list[str]
    prepared: Any
    num_parameters: int


def evaluate_target(
    target_path: str,
    *,
    split: str | None,
    data_file: str | None,
    batch_size: int | None = None,
    baseline: bool = True,
) -> Evaluation:
    from fine_tune_cli.engine.runtime import Precision, pick_device
    from fine_tune_cli.evaluation.metrics import reliability_bins
    from fine_tune_cli.tasks import task_for

    target = resolve_target(target_path)
    recipe = target.recipe
    kind = task_for(recipe.model)
    prepared = prepared_for(target)
    if data_file:
        if not kind.evaluates_new_files:
            raise RecipeError("--data: only classification runs can evaluate a new file")
        path = Path(data_file)
        if not path.exists():  # a file, or an image folder
            raise DataError(f"{path}: --data file not found")
        # A new file through the run's pipeline and tokenizer (labels must be known).
        data, texts = kind.split_from_file(recipe, prepared, path)
        split_name = path.stem
    else:
        split_name = split or prepared.default_eval_split()
        if split_name not in prepared.splits or not len(prepared.splits[split_name]):
            have = [k for k, v in prepared.splits.items() if len(v)]
            raise RecipeError(f"--split: no '{split_name}' split (have: {', '.join(have)})")
        data = prepared.splits[split_name]
        texts = data.texts(prepared.path)
    device = pick_device(recipe.train.device)
    model = load_model(target).to(device)
    task = kind.from_recipe(recipe, prepared)
    bs = batch_size or recipe.train.eval_batch_size or 2 * recipe.train.batch_size
    precision = Precision(recipe.train.precision, device)
    result = task.evaluate(model, data, bs, device, precision.autocast)
    if task.generates_samples:  # generative tasks: show what was learned
        result.details["samples"] = task.samples(model, data, device)
    metrics = result.metrics
    probs, labels = result.details.get("probs"), result.details.get("labels")
    if isinstance(probs, np.ndarray) and probs.ndim == 2 and labels is not None:
        metrics["reliability"] = reliability_bins(labels, probs)  # the diagram beside ECE
    if baseline and recipe.eval.baseline:
        metrics.update(kind.baseline(recipe, prepared, data, texts))
    parameters = sum(p.numel() for p in model.parameters())
    return Evaluation(target, split_name, metrics, result.details, texts, prepared, parameters)


def misclassified(details: dict[str, Any], texts: list[str], labels: list[str], k: int = 20):
    probs, y = details.get("probs"), details.get("labels")
    if probs is None or not texts:
        return []
    pred = probs.argmax(1)
    wrong = np.nonzero(pred != y)[0]
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:k]
    return [
        {
            "text": texts[i],
            "true": labels[y[i]],
            "pred": labels[pred[i]],
            "score": round(float(probs[i, pred[i]]), 4),
        }
        for i in wrong
    ]


def run_eval(
    target_path: str,
    *,
    split: str | None,
    data_file: str | None,
    compare: str | None,
    fail_under: list[str],
) -> dict[str, Any]:
    gates = parse_gates(fail_under)
    with torch.inference_mode():
        ev = evaluate_target(target_path, split=split, data_file=data_file)
    flat = flat_metrics(ev.metrics)
    comparison = None
    if compare:
        with torch.inference_mode():
            other = evaluate_target(
                compare,
                split=ev.split if not data_file else None,
                data_file=data_file,
                baseline=False,  # the same data's baseline is already in this run's figures
            )
        comparison = {"run_dir": compare, **compare_metrics(flat, flat_metrics(other.metrics))}
    outputs = _write(ev, comparison)
    if ev.target.recipe.eval.explain:  # IG of the N worst misclassified, beside the report
        from fine_tune_cli.explain.run import explain_misclassified

        out_dir = eval_dir(ev.target, ev.split)
        outputs.update(explain_misclassified(ev.target, ev.details, ev.texts, out_dir))
    from fine_tune_cli.trackers import report_eval  # the run's MLflow / W&B / TensorBoard

    report_eval(ev.target, ev.split, flat, eval_dir(ev.target, ev.split))
    payload: dict[str, Any] = {
        "run_dir": str(ev.target.run.path) if ev.target.run else None,
        "split": ev.split,
        "outputs": outputs,
        "metrics": flat,
    }
    if comparison:
        payload["compare"] = comparison
    failed = []
    for name, threshold in gates.items():
        if name not in flat:
            raise RecipeError(
                f"--fail-under: metric '{name}' not computed (have: {', '.join(flat)})"
            )
        value = flat[name]
        bad = value > threshold if name in LOWER_IS_BETTER else value < threshold
        if bad:
            failed.append(
                f"{name} {value:.4f} {'>' if name in LOWER_IS_BETTER else '<'} {threshold}"
            )
    if failed:
        payload["gate"] = {"failed": failed}
        error = GateError("gate failed: " + "; ".join(failed) + f" (report: {outputs['metrics']})")
        error.payload = payload
        raise error
    return payload


def _write(ev: Evaluation, comparison: dict[str, Any] | None) -> dict[str, str]:
    """metrics.json and the report of one evaluation (header block, curves, tables)."""
    from fine_tune_cli.evaluation.image_report import image_plots
    from fine_tune_cli.evaluation.report import write_report
    from fine_tune_cli.evaluation.summary import class_counts, run_header
    from fine_tune_cli.faults import signal_at
    from fine_tune_cli.tasks import task_for

    signal_at("eval")  # tests: SIGTERM once the metrics exist, before anything is written
    target = ev.target
    labels = _labels(target)
    history = target.run.history() if target.run else []
    provenance = target.run.provenance() if target.run else {}
    samples = ev.details.get("samples")
    examples = samples or misclassified(ev.details, ev.texts, labels)
    generative = task_for(target.recipe.model).generates_samples
    header = run_header(
        target.recipe,
        ev.prepared.manifest,
        provenance,
        history,
        ev.num_parameters,
        f"{target.model_dir} on split '{ev.split}'",
    )
    return write_report(
        eval_dir(target, ev.split),
        ev.metrics,
        title=f"{target.recipe.name}: {ev.split}",
        label_names=labels or None,
        history=history or None,
        examples=examples,
        plots=image_plots(ev.details, labels),  # misclassified.png for images
        header=header,
        class_counts=class_counts(ev.prepared.manifest),
        best_metric=target.recipe.train.best_metric,
        best_step=(provenance.get("summary") or {}).get("best_step"),
        comparison=comparison,
        examples_title="Generated samples" if generative else "Examples",
    )


# Figures of the data or of another model, not of this one: no side is "better".
NEUTRAL = {
    "num_examples",
    "num_tokens",
    "majority_baseline",
    "baseline_accuracy",
    "baseline_f1_macro",
}


def compare_metrics(this: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Side by side: per shared metric this run's value, the other's, the delta
    (this - other) and which side is better by the metric's direction (lower for
    loss-like metrics); plus the two flat dicts and the deltas (kept for scripts)."""
    table: dict[str, dict[str, Any]] = {}
    for name in this:
        if name not in other:
            continue
        a, b = this[name], other[name]
        better = None
        if name not in NEUTRAL and a != b:
            lower = name in LOWER_IS_BETTER
            better = "this" if (a < b) == lower else "other"
        table[name] = {"this": a, "other": b, "delta": a - b, "better": better}
    return {
        "metrics": other,
        "delta": {k: v["delta"] for k, v in table.items()},
        "table": table,
    }


def _labels(target: Target) -> list[str]:
    """The model's label names for the report (none for tasks without labels, whose
    configs still carry transformers' default id2label)."""
    import json

    from fine_tune_cli.tasks import task_for

    if not task_for(target.recipe.model).needs_labels:
        return []
    config = json.loads((target.model_dir / "config.json").read_text())
    id2label = config.get("id2label") or {}
    return [id2label[str(i)] for i in range(len(id2label))]
