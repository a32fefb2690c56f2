"""TorchScript: the model traced (`torch.jit.trace`) behind a wrapper that takes the input
tensors positionally and returns a tuple of its outputs (`(logits,)` for classification),
saved as one archive that plain `torch.jit.load(path)(input_ids, attention_mask)` runs
without this package.

The example batch is a real one with padding, so the traced graph keeps the attention
mask path (a batch without padding could let the model drop its mask while tracing).
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
)

MODEL_FILE = "model.pt"


def write(ctx: ExportContext, out: Path) -> dict[str, Any]:
    names = input_names(ctx.example)
    args = tuple(ctx.example[n] for n in names)
    with quiet(), torch.no_grad():
        module = OutputsModule(ctx.model, names, ctx.outputs).eval()
        traced = torch.jit.trace(module, args, check_trace=False)
        traced.save(str(out / MODEL_FILE))
    ctx.tokenizer.save_pretrained(str(out))
    return {
        "file": MODEL_FILE,
        "runtime": "torch.jit",
        "method": "trace",
        "inputs": names,
        "outputs": ctx.outputs,
        "usage": f"torch.jit.load('{MODEL_FILE}')({', '.join(names)})"
        f" -> ({', '.join(ctx.outputs)},)",
    }


def load(root: Path, artefact: dict[str, Any], recipe: Any) -> RunFn:
    # A TorchScript archive holds code as well as weights: callers verify its sha256
    # against the manifest first (load_exported), so only what ftc wrote is loaded.
    with quiet():
        module = torch.jit.load(str(root / artefact["file"]), map_location="cpu").eval()
    names, outputs = artefact["inputs"], artefact["outputs"]

    def run(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            got = module(*(batch[n] for n in names))
        if isinstance(got, torch.Tensor):  # a single-output archive
            got = (got,)
        return {k: v.float().numpy() for k, v in zip(outputs, got, strict=True)}

    return run


EXPORTERS.add(
    "torchscript", Exporter(write, load, "exact", "TorchScript archive (traced; torch.jit.load)")
)
