"""Model FLOPs per token (6N + 12 L d T) against hand counts on tiny configs, the peak
table lookup, and MFU in metrics.jsonl only where a peak is known."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from fine_tune_cli.engine.flops import batch_flops, model_shape, peak_for_name
from tests.conftest import TINY


def test_bert_classifier_matches_a_hand_count():
    d, layers, inner, labels = 32, 2, 64, 3
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=500,
            hidden_size=d,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=inner,
            num_labels=labels,
        )
    )
    # Per layer: Q, K, V, attention output (4 d^2) and the two FFN matrices (2 d inner);
    # then the pooler (d^2) and the classifier (d x labels). Embeddings are lookups.
    n = layers * (4 * d * d + 2 * d * inner) + d * d + d * labels
    assert n == 17_504
    shape = model_shape(model)
    assert (shape.matmul_weights, shape.layers, shape.hidden) == (n, layers, d)
    # Attention per layer and token: QK^T and AV, 2 d T FLOPs each forward, x3 with backward.
    assert shape.flops_per_token(16) == 6 * n + 12 * layers * d * 16 == 117_312


def test_gpt2_counts_its_conv1d_layers_and_the_tied_lm_head():
    d, layers, vocab = 32, 2, 100
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=4, n_positions=64)
    )
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, yet a matmul
    # Per block: c_attn (3 d^2), attention c_proj (d^2), c_fc (4 d^2), mlp c_proj (4 d^2).
    n = layers * 12 * d * d + vocab * d
    shape = model_shape(model)
    assert shape.matmul_weights == n == 27_776
    assert (shape.layers, shape.hidden, shape.seq_len) == (layers, d, 64)
    batch = {"input_ids": torch.zeros(4, 10, dtype=torch.long)}
    assert batch_flops(shape, batch, tokens=37) == 37 * (6 * n + 12 * layers * d * 10)


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989.0),
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10G", 70.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("Some Future GPU", None),
    ],
)
def test_peak_table_picks_the_longest_matching_name(name: str, tflops: float | None):
    peak = peak_for_name(name)
    assert peak == (tflops * 1e12 if tflops is not None else None)


def _steps(run_dir) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r]


def test_cpu_runs_log_tokens_per_s_and_no_mfu(ftc, tmp_path):
    r = ftc("train", "demo", *TINY, "train.max_steps=3", f"train.run_dir={tmp_path / 'r'}")
    assert r.code == 0, r.err
    steps = _steps(tmp_path / "r")
    assert steps and all(s["tokens_per_s"] > 0 and "mfu" not in s for s in steps)


def test_mfu_is_model_flops_of_real_tokens_over_the_peak(ftc, tmp_path, monkeypatch):
    """With a known peak (as on CUDA), mfu x peak / tokens_per_s is the FLOPs per token of
    some width between 1 and data.max_length (64 in TINY)."""
    monkeypatch.setattr("fine_tune_cli.engine.trainer.peak_flops", lambda device: 1e12)
    r = ftc("train", "demo", *TINY, "train.max_steps=3", f"train.run_dir={tmp_path / 'r'}")
    assert r.code == 0, r.err
    from fine_tune_cli.recipe import load_recipe
    from fine_tune_cli.tasks import task_for

    steps = _steps(tmp_path / "r")
    assert steps and all(s["mfu"] > 0 for s in steps)
    recipe = load_recipe("demo", TINY).recipe
    assert task_for(recipe.model).name == "classification"
    # tiny BERT preset: d=64, 2 layers, FFN 256, 2 labels; the trained tokenizer's vocab
    # does not enter (embeddings are lookups).
    d, layers = 64, 2
    n = layers * (4 * d * d + 2 * d * 256) + d * d + d * 2
    for s in steps:
        per_token = s["mfu"] * 1e12 / s["tokens_per_s"]
        width = (per_token - 6 * n) / (12 * layers * d)
        assert 1 <= round(width) <= 64 and abs(width - round(width)) < 1e-3
