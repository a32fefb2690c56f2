"""Export formats. Each writes its artefacts into a directory and returns a function
that runs the exported artefact on a batch, so one parity check serves all formats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_tune_cli.registry import Registry

RunFn = Callable[[dict[str, torch.Tensor]], np.ndarray]  # batch -> logits


@dataclass(frozen=True)
class Exporter:
    write: Callable[[torch.nn.Module, Any, Path, Any], RunFn]
    doc: str


EXPORTERS: Registry[Exporter] = Registry("export format")


def _hf(model: torch.nn.Module, tokenizer: Any, out: Path, target: Any) -> RunFn:
    """HF directory (config + model.safetensors + tokenizer) for plain transformers."""
    import transformers

    from fine_tune_cli.models.registry import get_model

    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    cls = getattr(transformers, get_model(target.recipe.model).auto_class)
    loaded = cls.from_pretrained(str(out), local_files_only=True, use_safetensors=True).eval()

    def run(batch: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return loaded(**batch).logits.float().numpy()

    return run


EXPORTERS.add("hf", Exporter(_hf, "HF model dir (safetensors) + tokenizer"))
