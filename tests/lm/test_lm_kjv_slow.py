"""The built-in KJV pretraining recipes, as shipped but for the step count (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, needs_shared

SHORT = ["train.max_steps=6", "train.eval_every=6"]


@pytest.mark.slow
def test_kjv_gpt2_clm_and_bert_mlm_recipes_train(
    ftc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_shared("kjv.txt")
    monkeypatch.setenv("FTC_SHARED_DATA", str(SHARED_DATA))
    for recipe, metric in (("gpt2-clm-kjv", "perplexity"), ("bert-mlm-kjv", "mlm_accuracy")):
        result = ftc("train", recipe, *SHORT, "--json")
        assert result.code == 0, result.err
        p = result.json()
        assert p["status"] == "ok" and p["steps"] == 6
        assert math.isfinite(p["metrics"][metric]) and math.isfinite(p["metrics"]["perplexity"])
        prov = json.loads((tmp_path / "runs" / recipe / "provenance.json").read_text())
        manifest = json.loads((Path(prov["data"]["path"]) / "manifest.json").read_text())
        assert manifest["tokenizer"]["vocab_size"] >= 8000
        for name, info in manifest["splits"].items():
            assert info["padding_tokens"] == 0, name
            assert info["tokens"] == info["examples"] * 128, name
