"""`ftc eval`: evaluate a run's best (or a checkpoint's) model on a split or a new file,
write metrics.json + report, compare with another run, and gate on --fail-under."""

from __future__ import annotations

import logging
import re
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


def evaluate_target(
    target_path: str,
    *,
    split: str | None,
    data_file: str | None,
    batch_size: int | None = None,
) -> tuple[Target, str, dict[str, Any], dict[str, Any], list[str]]:
    from fine_tune_cli.engine.runtime import Precision, pick_device
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
    return target, split_name, result.metrics, result.details, texts


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
    from fine_tune_cli.evaluation.report import write_report

    gates = parse_gates(fail_under)
    with torch.inference_mode():
        target, split_name, metrics, details, texts = evaluate_target(
            target_path, split=split, data_file=data_file
        )
    labels = _labels(target)
    out_dir = eval_dir(target, split_name)
    examples = details.get("samples") or misclassified(details, texts, labels)
    from fine_tune_cli.evaluation.image_report import image_plots

    outputs = write_report(
        out_dir,
        metrics,
        title=f"{target.recipe.name}: {split_name}",
        label_names=labels or None,
        history=target.run.history() if target.run else None,
        examples=examples,
        plots=image_plots(details, labels),  # misclassified.png for images
    )
    flat = flat_metrics(metrics)
    payload: dict[str, Any] = {
        "run_dir": str(target.run.path) if target.run else None,
        "split": split_name,
        "outputs": outputs,
        "metrics": flat,
    }
    if compare:
        with torch.inference_mode():
            _, _, other, _, _ = evaluate_target(
                compare, split=split_name if not data_file else None, data_file=data_file
            )
        other_flat = flat_metrics(other)
        payload["compare"] = {
            "run_dir": compare,
            "metrics": other_flat,
            "delta": {k: flat[k] - other_flat[k] for k in flat if k in other_flat},
        }
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
