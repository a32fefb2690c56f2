"""What every export format shares: the registry, what a writer gets, and the runner
protocol (batch of input tensors -> logits as numpy) that parity and `ftc predict` use.

Each format registers a `write` (model -> artefact files) and a `load` (artefact files ->
runner). The parity gate runs the artefact through `load`, the same path `ftc predict`
takes, so what passed the gate is what gets served.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fine_tune_cli.registry import Registry

# input tensors -> named outputs ("logits", or e.g. "prediction_logits" and
# "seq_relationship_logits" for BERT pretraining), as numpy arrays
RunFn = Callable[[dict[str, torch.Tensor]], dict[str, np.ndarray]]
LABEL_KEYS = ("labels", "next_sentence_label")  # in task batches, never model inputs

# Which parity limits apply: `exact` formats must reproduce the torch logits; `int8`
# moves them by quantization noise (own limits); `metric` (pruned) changes them on
# purpose, so only the task metric is gated.
Gate = Literal["exact", "int8", "metric"]


@dataclass
class ExportContext:
    """What a format writer gets: the torch model and real data to trace or tune on."""

    model: torch.nn.Module  # eval mode, CPU
    tokenizer: Any
    recipe: Any  # Recipe
    spec: Any  # ExportSpec (recipe keys + command-line overrides)
    example: dict[str, torch.Tensor]  # a real padded batch (inputs only) for tracing
    outputs: list[str]  # tensor outputs of the model (see output_names)
    task: Any
    prepared: Any  # PreparedDataset (train split for recovery fine-tuning)


@dataclass(frozen=True)
class Exporter:
    write: Callable[[ExportContext, Path], dict[str, Any]]  # -> manifest "artefact" entry
    load: Callable[[Path, dict[str, Any], Any], RunFn]  # (dir, artefact, recipe) -> runner
    gate: Gate
    doc: str
    options: tuple[str, ...] = ()  # export.* keys it reads besides its gate's and the common
    requires: tuple[str, ...] = ()  # optional modules (fine_tune_cli/optional.py) it needs


EXPORTERS: Registry[Exporter] = Registry("export format")


def input_names(batch: dict[str, torch.Tensor]) -> list[str]:
    """Model inputs of a task batch, in the collate order (labels are not inputs)."""
    return [k for k in batch if k not in LABEL_KEYS]


def output_names(model: torch.nn.Module, example: dict[str, torch.Tensor]) -> list[str]:
    """The tensor outputs the model returns for a batch, in its ModelOutput order
    (no loss without labels; hidden states, attentions and caches are not exported)."""
    with torch.inference_mode():
        out = model(**example)
    skip = {"loss", "hidden_states", "attentions", "cross_attentions", "past_key_values"}
    return [k for k, v in out.items() if k not in skip and torch.is_tensor(v)]


class OutputsModule(torch.nn.Module):
    """Positional tensors in, a tuple of the named outputs out: the shape tracers and
    exporters want."""

    def __init__(self, model: torch.nn.Module, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.model = model
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.inputs, tensors, strict=True)))
        return tuple(out[k] for k in self.outputs)


class RunnerModule(torch.nn.Module):
    """Makes an exported artefact look like a transformers model (`out.logits`), so task
    code (`task.evaluate`) measures the artefact exactly as it measures the torch model."""

    def __init__(self, run: RunFn):
        super().__init__()
        self.run = run

    def forward(self, **inputs: torch.Tensor) -> Any:
        from types import SimpleNamespace

        batch = {k: v.cpu() for k, v in inputs.items() if k not in LABEL_KEYS}
        out = self.run(batch)
        return SimpleNamespace(**{k: torch.from_numpy(np.asarray(v)) for k, v in out.items()})


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence tracer/exporter chatter (deprecation and tracer warnings, progress logs):
    our own log line says what happened, and `--json` keeps stdout to one object."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "root", "onnx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(_Sink()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


class _Sink:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def save_client_files(ctx: ExportContext, out: Path) -> None:
    """config.json (with the real id2label/label2id) and the tokenizer or image processor
    beside an artefact that is not an HF model dir: optimum's layout, so a client opens
    the dir with AutoConfig + AutoTokenizer (or AutoImageProcessor) and the runtime alone,
    without this package or our manifest."""
    import copy

    config = copy.deepcopy(ctx.model.config)
    config.architectures = [type(ctx.model).__name__]
    config.save_pretrained(str(out))
    ctx.tokenizer.save_pretrained(str(out))


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
