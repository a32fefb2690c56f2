"""The GPU-path switches a run took are recorded in provenance.json (attention kernel,
optimizer implementation, compile, precision, FLOPs per token); on CPU they are the
CPU choices (fused AdamW, no peak, no device name), train.attention changes the kernel
the model really uses, and optim.fused=false falls back to foreach."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY


@pytest.mark.parametrize(
    ("attention", "expected", "fused", "impl"),
    [("auto", "sdpa", "true", "fused"), ("eager", "eager", "false", "foreach")],
)
def test_provenance_records_the_runtime_switches(ftc, tmp_path, attention, expected, fused, impl):
    run = tmp_path / "run"
    r = ftc(
        "train",
        "demo",
        *TINY,
        "train.max_steps=2",
        f"train.attention={attention}",
        f"optim.fused={fused}",
        f"train.run_dir={run}",
        "--json",
    )
    assert r.code == 0, r.err
    runtime = json.loads((run / "provenance.json").read_text())["runtime"]
    assert runtime["attn_implementation"] == expected
    assert runtime["optimizer_impl"] == impl
    assert runtime["compile"] is False and runtime["compile_dynamic"] is False
    assert runtime["precision"] == "fp32"
    assert runtime["device_name"] is None and runtime["peak_flops"] is None
    # tiny BERT (d=64, 2 layers, FFN 256, 2 labels) at data.max_length=64
    n = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 64 * 64 + 64 * 2
    assert runtime["matmul_weights"] == n
    assert runtime["flops_per_token"] == 6 * n + 12 * 2 * 64 * 64
