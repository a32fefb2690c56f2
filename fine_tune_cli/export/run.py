"""`ftc export`: write a format into a temp dir, gate it on parity with the torch model
on real validation batches, then publish it with a sha256 manifest (or publish nothing)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_tune_cli.errors import ConflictError, GateError, OutputError, RecipeError
from fine_tune_cli.recipe import ExportSpec, parse_override, validate_tree
from fine_tune_cli.targets import load_model, resolve_target

log = logging.getLogger("ftc")


def export_spec(base: ExportSpec, overrides: list[str]) -> ExportSpec:
    values = base.model_dump()
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("export."):
            raise RecipeError(f"override '{text}': export only takes export.* keys")
        values[key.removeprefix("export.")] = value
    tree = {"name": "x", "model": {"family": "bert"}, "data": {"source": {"path": "x"}}}
    return validate_tree(tree | {"export": values}, default_origin="export overrides").export


def parity_batches(prepared: Any, task: Any, samples: int, batch_size: int = 32):
    split = next(
        (prepared.splits[s] for s in ("validation", "test", "train") if len(prepared.splits[s])),
    )
    n = min(samples, len(split))
    index = np.arange(n)
    return [(task.collate(split, index[i : i + batch_size])) for i in range(0, n, batch_size)]


def run_export(
    target_path: str, *, fmt: str, out: str | None, overrides: list[str], overwrite: bool
) -> dict[str, Any]:
    from fine_tune_cli.data.prepare import prepare_dataset
    from fine_tune_cli.engine.run import build_task
    from fine_tune_cli.export.formats import EXPORTERS
    from fine_tune_cli.manifest import write_manifest

    if fmt not in EXPORTERS:
        raise RecipeError(f"--format: {EXPORTERS.unknown_message(fmt)}")
    target = resolve_target(target_path)
    spec = export_spec(target.recipe.export, overrides)
    base = target.run.path if target.run else target.model_dir.parent
    out_dir = Path(out) if out else base / "export" / fmt
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConflictError(f"{out_dir}: output dir is not empty; pass --overwrite or --out")
    prepared, _ = prepare_dataset(target.recipe)
    task = build_task(target.recipe, prepared)
    model = load_model(target)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        started = time.time()
        run_exported = EXPORTERS.get(fmt).write(model, prepared.tokenizer, tmp, target)
        parity = check_parity(
            model, run_exported, parity_batches(prepared, task, spec.parity_samples)
        )
        parity["seconds"] = round(time.time() - started, 2)
        passed = (
            parity["max_abs_diff"] <= spec.max_abs_diff
            and parity["metric_drop"] <= spec.max_metric_drop
        )
        parity["passed"] = passed
        result = {
            "run_dir": str(target.run.path) if target.run else None,
            "format": fmt,
            "parity": parity,
            "tolerances": {
                "max_abs_diff": spec.max_abs_diff,
                "max_metric_drop": spec.max_metric_drop,
            },
        }
        if not passed:
            error = GateError(
                f"{fmt} export failed its parity gate: max |diff| {parity['max_abs_diff']:.2e}"
                f" (limit {spec.max_abs_diff:.2e}), accuracy drop {parity['metric_drop']:.4f}"
                f" (limit {spec.max_metric_drop}); nothing written"
            )
            error.payload = result
            raise error
        write_manifest(
            tmp,
            format=fmt,
            source=str(target.model_dir.resolve()),
            run_dir=str(target.run.path.resolve()) if target.run else None,
            recipe=target.recipe.resolved(),
            parity=parity,
            tolerances=result["tolerances"],
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write export ({exc.strerror})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    log.info(
        "exported %s to %s (%.1f MB); parity max |diff| %.2e",
        fmt,
        out_dir,
        size / 1e6,
        parity["max_abs_diff"],
    )
    return result | {
        "outputs": {"dir": str(out_dir), "manifest": str(out_dir / "manifest.json")},
        "bytes": size,
    }


def check_parity(model: torch.nn.Module, run_exported: Any, batches: list[dict]) -> dict[str, Any]:
    """Max/mean |logit difference| and accuracy of both on the same real batches."""
    diffs, agree, torch_correct, export_correct, n = [], 0, 0, 0, 0
    model.eval()
    for batch in batches:
        labels = batch.get("labels")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.inference_mode():
            ref = model(**inputs).logits.float().numpy()
        got = run_exported(inputs)
        diffs.append(np.abs(ref - got).reshape(len(ref), -1))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        if labels is not None:
            y = labels.numpy()
            torch_correct += int((ref.argmax(-1) == y).sum())
            export_correct += int((got.argmax(-1) == y).sum())
        n += len(ref)
    d = np.concatenate(diffs)
    torch_acc, export_acc = torch_correct / n, export_correct / n
    return {
        "samples": n,
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "prediction_agreement": agree / n,
        "metric": "accuracy",
        "metric_torch": torch_acc,
        "metric_export": export_acc,
        "metric_drop": max(0.0, torch_acc - export_acc),
    }
