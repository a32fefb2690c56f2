"""pt2: the model captured by `torch.export` (a graph of ATen ops, no Python) behind a
wrapper that takes the input tensors positionally and returns a tuple of its outputs
(`(logits,)` for classification), saved with `torch.export.save` as `model.pt2`. Plain
`torch.export.load("model.pt2").module()(input_ids, attention_mask)` runs it without this
package; batch and sequence dims are dynamic. config.json and the tokenizer (or image
processor) sit beside it, as in the ONNX dirs.

This replaces the TorchScript export (`torch.jit.trace`, deprecated in torch);
`--format torchscript` is a deprecated alias that writes this format.

The example batch is a real one with padding, so the captured graph keeps the attention
mask path. The dims are `Dim.DYNAMIC`: torch.export works out their valid range itself
(e.g. sequence <= the model's position embeddings) instead of our guessing a bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_tune_cli.export.base import (
    EXPORTERS,
    ExportContext,
    Exporter,
    OutputsModule,
    RunFn,
    input_names,
    quiet,
    save_client_files,
)

MODEL_FILE = "model.pt2"


def write(ctx: ExportContext, out: Path) -> dict[str, Any]:
    names = input_names(ctx.example)
    args = tuple(ctx.example[n] for n in names)
    dynamic = torch.export.Dim.DYNAMIC
    # Token inputs are (batch, sequence); images (batch, channels, h, w) keep their size.
    shapes = tuple({0: dynamic, 1: dynamic} if a.ndim == 2 else {0: dynamic} for a in args)
    with quiet(), torch.no_grad():
        module = OutputsModule(ctx.model, names, ctx.outputs).eval()
        program = torch.export.export(module, args, dynamic_shapes=(shapes,), strict=False)
        torch.export.save(program, str(out / MODEL_FILE))
    save_client_files(ctx, out)
    return {
        "file": MODEL_FILE,
        "runtime": "torch.export",
        "inputs": names,
        "outputs": ctx.outputs,
        "dynamic_axes": {
            n: ["batch", "sequence"] if a.ndim == 2 else ["batch"]
            for n, a in zip(names, args, strict=True)
        },
        "usage": f"torch.export.load('{MODEL_FILE}').module()({', '.join(names)})"
        f" -> ({', '.join(ctx.outputs)},)",
    }


def load(root: Path, artefact: dict[str, Any], recipe: Any) -> RunFn:
    # A pt2 archive may hold pickled constants (torch.export.load warns never to load an
    # untrusted one): callers verify its sha256 against the manifest first
    # (load_exported), so only what ftc wrote is loaded.
    with quiet():
        module = torch.export.load(str(root / artefact["file"])).module()
    names, outputs = artefact["inputs"], artefact["outputs"]

    def run(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            got = module(*(batch[n] for n in names))
        if isinstance(got, torch.Tensor):
            got = (got,)
        return {k: v.float().numpy() for k, v in zip(outputs, got, strict=True)}

    return run


EXPORTERS.add(
    "pt2",
    Exporter(write, load, "exact", "torch.export program (model.pt2; torch.export.load)"),
)
