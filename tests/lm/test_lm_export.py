"""pt2 (torch.export) and ONNX exports of the language models: a GPT-2 causal LM and a
BERT masked LM pass the parity gate through the real CLI, and model.pt2 runs other batch
and sequence sizes in plain torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import Result


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("which", ["clm", "mlm"])
def test_language_models_export(
    ftc, clm_run: tuple[Result, Path], mlm_run: tuple[Result, Path], tmp_path: Path, which, fmt
) -> None:
    run = (clm_run if which == "clm" else mlm_run)[1]
    out = tmp_path / fmt
    result = ftc("export", run, "--format", fmt, "--out", out, "export.latency_runs=1", "--json")
    assert result.code == 0, result.err
    parity = result.json()["parity"]
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4
    assert parity["metric"] == ("loss" if which == "clm" else "mlm_accuracy")
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"config.json", "tokenizer_config.json"} <= set(manifest["files"])
    if fmt == "pt2":
        config = json.loads((out / "config.json").read_text())
        module = torch.export.load(str(out / "model.pt2")).module()
        for shape in ((1, 3), (3, 9)):
            ids = torch.randint(5, 50, shape)
            (logits, *_) = module(ids, torch.ones_like(ids))
            assert tuple(logits.shape) == (*shape, config["vocab_size"])
