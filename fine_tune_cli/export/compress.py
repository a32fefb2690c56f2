"""Smaller models: `int8` (onnxruntime dynamic quantization of the ONNX export) and
`pruned` (magnitude pruning, optionally followed by a short recovery fine-tune).

int8 uses onnxruntime's `quantize_dynamic` rather than torch.ao eager quantization: the
latter is deprecated and only sees `nn.Linear` (it skips GPT-2's Conv1D layers), while
the ONNX graph is quantized the same way whatever module classes produced it.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_tune_cli.export.base import (
    EXPORTERS,
    ExportContext,
    Exporter,
    RunFn,
    dir_bytes,
    quiet,
    save_client_files,
)
from fine_tune_cli.export.hf import load_hf
from fine_tune_cli.export.onnx import MODEL_FILE, REQUIRES, export_onnx, onnx_runner
from fine_tune_cli.optional import require

SPARSITY_REPORT = "sparsity.json"


# --------------------------------------------------------------------------- int8
def write_int8(ctx: ExportContext, out: Path) -> dict[str, Any]:
    """fp32 ONNX export (in a scratch dir), then int8 weights: MatMul/Gemm/Gather
    (embeddings) get per-channel int8 weights; activations are quantized at run time.
    The dir has the ONNX layout (config.json + tokenizer/processor beside model.onnx)."""
    quantization = require("onnxruntime.quantization", "--format int8")

    with tempfile.TemporaryDirectory(prefix="ftc-int8-") as scratch:
        fp32 = Path(scratch) / MODEL_FILE
        info = export_onnx(ctx.model, ctx.example, ctx.outputs, fp32, ctx.spec.opset)
        fp32_bytes = dir_bytes(Path(scratch))
        with quiet():
            quantization.quantize_dynamic(
                fp32,
                out / MODEL_FILE,
                weight_type=quantization.QuantType.QInt8,
                per_channel=True,
                use_external_data_format=fp32_bytes > 1_500_000_000,
            )
    save_client_files(ctx, out)
    int8_bytes = sum(p.stat().st_size for p in out.glob(MODEL_FILE + "*"))
    return info | {
        "quantization": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "int8 (per channel)",
        "activations": "uint8, quantized at run time",
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": round(fp32_bytes / max(1, int8_bytes), 2),
    }


def load_int8(root: Path, artefact: dict[str, Any], recipe: Any) -> RunFn:
    return onnx_runner(root / artefact["file"])


# --------------------------------------------------------------------------- pruned
def prunable(
    model: torch.nn.Module, head_modules: tuple[str, ...]
) -> list[tuple[str, torch.nn.Module]]:
    """Linear (and GPT-2 Conv1D) layers of the body. Embeddings, norms, biases, the task
    head (the family's `head_modules`: few weights, all decisive) and weights tied to the
    embeddings (an LM head) stay dense."""
    from transformers.pytorch_utils import Conv1D

    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    get_out = getattr(model, "get_output_embeddings", None)
    lm_head = get_out() if callable(get_out) else None
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear | Conv1D) or module is lm_head:
            continue
        if name.split(".", 1)[0] in head_modules or uses[id(module.weight)] > 1:
            continue
        found.append((name, module))
    return found


def prune_model(
    model: torch.nn.Module, layers: list[tuple[str, torch.nn.Module]], sparsity: float, scope: str
) -> None:
    """L1 (magnitude) unstructured pruning: the smallest |w| across all layers (global)
    or the same share in every layer. Leaves torch's mask reparametrization in place."""
    import torch.nn.utils.prune as prune

    params = [(m, "weight") for _, m in layers]
    if scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for module, name in params:
            prune.l1_unstructured(module, name, amount=sparsity)


def recover(model: torch.nn.Module, ctx: ExportContext, steps: int, lr: float) -> dict[str, Any]:
    """A short fine-tune on the train split with the masks in place (pruned weights stay
    zero): the recipe's optimizer and batch size, a lower LR decaying linearly to 0."""
    from fine_tune_cli.data.batching import epoch_order
    from fine_tune_cli.engine.optim import Schedule, build_optimizer
    from fine_tune_cli.models.registry import FAMILIES
    from fine_tune_cli.recipe import ScheduleSpec

    recipe = ctx.recipe
    train = ctx.prepared.splits["train"]
    scale = lr / recipe.optim.lr
    head_lr = recipe.optim.head_lr * scale if recipe.optim.head_lr else None
    optimizer = build_optimizer(
        model,
        recipe.optim.model_copy(update={"lr": lr, "head_lr": head_lr}),
        FAMILIES.get(recipe.model.family).head_modules,
    )
    schedule = Schedule(optimizer, ScheduleSpec(name="linear"), steps)
    torch.manual_seed(recipe.train.seed)
    batch_size = recipe.train.batch_size
    order, epoch, losses = np.empty(0, dtype=np.int64), 0, []
    model.train()
    for _ in range(steps):
        while len(order) < batch_size:
            order = np.concatenate([order, epoch_order(len(train), recipe.train.seed, epoch)])
            epoch += 1
        idx, order = order[:batch_size], order[batch_size:]
        loss = ctx.task.loss(model, ctx.task.collate(train, idx))
        loss.backward()
        if recipe.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.clip_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    tail = losses[-10:]
    return {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "loss_first": round(losses[0], 5),
        "loss_last10": round(sum(tail) / len(tail), 5),
    }


def sparsity_report(model: torch.nn.Module, layers: list[tuple[str, torch.nn.Module]]) -> dict:
    per_layer = {}
    for name, module in layers:
        w = module.weight
        per_layer[name] = {"weights": w.numel(), "zeros": int((w == 0).sum())}
    pruned = sum(v["weights"] for v in per_layer.values())
    pruned_zeros = sum(v["zeros"] for v in per_layer.values())
    params = list(model.parameters())  # unique tensors (tied weights once)
    total = sum(p.numel() for p in params)
    zeros = sum(int((p == 0).sum()) for p in params)
    for entry in per_layer.values():
        entry["sparsity"] = round(entry["zeros"] / entry["weights"], 4)
    return {
        "layers_pruned": len(layers),
        "weights_in_pruned_layers": pruned,
        "sparsity_pruned_layers": round(pruned_zeros / max(1, pruned), 4),
        "parameters": total,
        "sparsity_model": round(zeros / max(1, total), 4),
        "per_layer": per_layer,
    }


def write_pruned(ctx: ExportContext, out: Path) -> dict[str, Any]:
    """Prune a copy of the model, optionally recover, make the zeros permanent
    (prune.remove) and save an HF dir; a sparsity report goes beside it."""
    import torch.nn.utils.prune as prune

    from fine_tune_cli.models.registry import FAMILIES

    spec = ctx.spec
    model = copy.deepcopy(ctx.model)
    layers = prunable(model, FAMILIES.get(ctx.recipe.model.family).head_modules)
    if not layers:
        from fine_tune_cli.errors import RecipeError

        raise RecipeError("--format pruned: the model has no linear layers to prune")
    prune_model(model, layers, spec.prune_sparsity, spec.prune_scope)
    recovery = None
    if spec.prune_recovery_steps:
        lr = spec.prune_recovery_lr or ctx.recipe.optim.lr / 10
        recovery = recover(model, ctx, spec.prune_recovery_steps, lr)
    for _, module in layers:
        prune.remove(module, "weight")
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    ctx.tokenizer.save_pretrained(str(out))
    report = {
        "method": "l1_unstructured (magnitude)",
        "scope": spec.prune_scope,
        "target_sparsity": spec.prune_sparsity,
        "kept_dense": "embeddings, norms, biases, the task head and tied LM heads",
        "recovery": recovery,
        **sparsity_report(model, layers),
    }
    (out / SPARSITY_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k != "per_layer"}
    return {
        "file": "model.safetensors",
        "runtime": "transformers",
        "outputs": ctx.outputs,
        "report": SPARSITY_REPORT,
        "note": "safetensors stores dense tensors: the zeros shrink the file only once"
        " compressed (e.g. gzip) or served by sparse kernels",
        "pruning": summary,
    }


EXPORTERS.add(
    "int8",
    Exporter(
        write_int8,
        load_int8,
        "int8",
        "ONNX with dynamic int8 weights, in optimum's layout",
        ("opset",),
        REQUIRES,
    ),
)
EXPORTERS.add(
    "pruned",
    Exporter(
        write_pruned,
        load_hf,
        "metric",
        "magnitude-pruned HF dir + sparsity report",
        ("prune_sparsity", "prune_scope", "prune_recovery_steps", "prune_recovery_lr"),
    ),
)
