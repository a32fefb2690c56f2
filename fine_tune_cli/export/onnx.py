"""ONNX: torch's dynamo exporter (`torch.onnx.export(dynamo=True)`, torch.export under the
hood) with dynamic batch and sequence axes, run by onnxruntime on the CPU.

The dir is in optimum's layout: `model.onnx` (+ `model.onnx.data` when the weights need
external data) beside `config.json` and the tokenizer files (or the image processor's
`preprocessor_config.json`), so AutoConfig + AutoTokenizer + onnxruntime open it alone.

Why dynamo and not the legacy TorchScript-based exporter: it is torch's default and
maintained path, and it follows transformers 5.x's mask code, which skips data-dependent
shortcuts while tracing; the legacy one is deprecated. It is slower to export (seconds),
which does not matter for a one-off export.
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
from fine_tune_cli.optional import require

MODEL_FILE = "model.onnx"
# One self-contained file unless the weights near protobuf's 2 GB limit; then the
# tensors go to model.onnx.data beside it (also listed in the manifest).
EXTERNAL_DATA_BYTES = 1_500_000_000
# What writing and running an ONNX file needs (the `export` extra); torch's exporter
# imports onnxscript and onnx itself, deep inside, so they are checked up front.
REQUIRES = ("onnx", "onnxscript", "onnxruntime")


def export_onnx(
    model: torch.nn.Module,
    example: dict[str, torch.Tensor],
    outputs: list[str],
    path: Path,
    opset: int,
) -> dict[str, Any]:
    """Write `model` (its named outputs) to `path`; batch (and sequence) axes stay dynamic."""
    from torch.export import Dim

    names = input_names(example)
    args = tuple(example[n] for n in names)
    batch = Dim("batch")
    seq = Dim("sequence")
    # Token inputs are (batch, sequence); images (batch, channels, h, w) keep their size.
    shapes = tuple({0: batch, 1: seq} if a.ndim == 2 else {0: batch} for a in args)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with quiet(), torch.no_grad():
        torch.onnx.export(
            OutputsModule(model, names, outputs).eval(),
            args,
            str(path),
            dynamo=True,
            verbose=False,
            input_names=names,
            output_names=outputs,
            dynamic_shapes=(shapes,),
            opset_version=opset,
            external_data=weights > EXTERNAL_DATA_BYTES,
        )
    return {
        "file": path.name,
        "runtime": "onnxruntime",
        "providers": ["CPUExecutionProvider"],
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": opset_of(path),
        "inputs": names,
        "outputs": outputs,
        "dynamic_axes": {
            n: ["batch", "sequence"] if a.ndim == 2 else ["batch"]
            for n, a in zip(names, args, strict=True)
        },
    }


def opset_of(path: Path) -> int:
    onnx = require("onnx", "reading an ONNX export")

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def onnx_runner(path: Path) -> RunFn:
    ort = require("onnxruntime", "running an ONNX export")

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # The same thread budget as torch (torch.set_num_threads / OMP_NUM_THREADS), so
    # latency comparisons are like for like and a batch job can cap both at once.
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    def run(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        got = session.run(outputs, {n: batch[n].cpu().numpy() for n in names})
        return dict(zip(outputs, got, strict=True))

    return run


def write(ctx: ExportContext, out: Path) -> dict[str, Any]:
    save_client_files(ctx, out)
    return export_onnx(ctx.model, ctx.example, ctx.outputs, out / MODEL_FILE, ctx.spec.opset)


def load(root: Path, artefact: dict[str, Any], recipe: Any) -> RunFn:
    return onnx_runner(root / artefact["file"])


EXPORTERS.add(
    "onnx",
    Exporter(
        write,
        load,
        "exact",
        "ONNX (dynamic batch/sequence) for onnxruntime, in optimum's layout",
        ("opset",),
        REQUIRES,
    ),
)
