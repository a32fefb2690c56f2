"""hf: an HF model dir (config + model.safetensors + tokenizer) for plain transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_tune_cli.export.base import EXPORTERS, ExportContext, Exporter, RunFn


def write_hf(ctx: ExportContext, out: Path) -> dict[str, Any]:
    """HF directory (config + model.safetensors + tokenizer) for plain transformers."""
    ctx.model.save_pretrained(str(out), safe_serialization=True)
    ctx.tokenizer.save_pretrained(str(out))
    return {"file": "model.safetensors", "runtime": "transformers", "outputs": ctx.outputs}


def load_hf(root: Path, artefact: dict[str, Any], recipe: Any) -> RunFn:
    """Weights from safetensors only (never pickle), via the family/task's Auto class."""
    import transformers

    from fine_tune_cli.models.registry import get_model

    cls = getattr(transformers, get_model(recipe.model).auto_class)
    model = cls.from_pretrained(str(root), local_files_only=True, use_safetensors=True).eval()
    names = artefact.get("outputs") or ["logits"]

    def run(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = model(**batch)
        return {k: out[k].float().numpy() for k in names}

    return run


EXPORTERS.add("hf", Exporter(write_hf, load_hf, "exact", "HF model dir (safetensors) + tokenizer"))
