"""Padding must not change what a model computes for an example: a short example scored
alone and scored in one batch with a much longer one gives the same fp32 logits (within
1e-5) in a train-mode forward with dropout off and through the task's `evaluate`, for every
text task and family (bert: classification, token_classification, mlm with fixed masks;
gpt2: classification, clm). And the padding mask itself: zeros exactly on the pads.

Real recipes are prepared from the bundled demo emails (tokenizer, encoding), each task's
own `collate` (data/batching.py pad_batch underneath) builds every batch, and models are the
registry's tiny ones, randomly initialised: the property holds for any weights."""

from __future__ import annotations

import contextlib
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from fine_tune_cli.data.store import PreparedSplit
from tests.conftest import DEMO_DATA

ATOL = 1e-5
SHORT, LONG = 3, 40  # tokens: the short example and the one it is batched with
LABEL_KEYS = ("labels", "next_sentence_label")
COMBOS = [
    ("bert", "classification"),
    ("bert", "token_classification"),
    ("bert", "mlm"),
    ("gpt2", "classification"),
    ("gpt2", "clm"),
]


def demo_texts(n: int) -> list[dict[str, str]]:
    with gzip.open(DEMO_DATA, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(n), fh, strict=False)]
    return [{"text": " ".join(r["text"].split())[:400], "label": r["label"]} for r in rows]


def write_data(root: Path, task: str) -> dict[str, Any]:
    """A small data file for `task` and the recipe's data.source section for it."""
    rows = demo_texts(40)
    if task == "classification":
        path = root / "cls.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"path": str(path)}
    if task == "token_classification":
        path = root / "tags.jsonl"
        lines = []
        for r in rows:
            words = r["text"].split()[:40]
            tags = ["CAP" if w[:1].isupper() else "O" for w in words]
            lines.append(json.dumps({"tokens": words, "tags": tags}) + "\n")
        path.write_text("".join(lines))
        return {"path": str(path), "text": "tokens", "label": "tags"}
    path = root / "corpus.txt"
    path.write_text("".join(r["text"] + "\n" for r in rows))
    return {"path": str(path), "format": "txt", "label": None}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    """Per (family, task): (recipe, task, model), prepared once for the module."""
    from fine_tune_cli.data.prepare import prepare_dataset
    from fine_tune_cli.models.registry import build_model
    from fine_tune_cli.recipe import validate_tree
    from fine_tune_cli.tasks import task_for

    root = tmp_path_factory.mktemp("invariance")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_CACHE_DIR", str(root / "cache"))
        for family, task in COMBOS:
            tree = {
                "version": 1,
                "name": f"{family}-{task}",
                "model": {"family": family, "task": task, "size": "tiny", "dropout": 0.0},
                "data": {
                    "source": write_data(root, task),
                    "tokenizer": {"vocab_size": 400},
                    "max_length": 64,
                },
                "train": {"max_steps": 1, "seed": 3},
            }
            if family == "gpt2":
                tree["data"]["tokenizer"]["kind"] = "bpe"
            recipe = validate_tree(yaml.safe_load(yaml.safe_dump(tree)))
            prepared, _ = prepare_dataset(recipe)
            torch.manual_seed(0)
            kind = task_for(recipe.model)
            model = build_model(recipe.model, kind.build_context(recipe, prepared))
            training = kind.from_recipe(recipe, prepared)
            out[family, task] = (training, model, two_rows(prepared.splits["train"]))
    return out


def two_rows(split: PreparedSplit) -> PreparedSplit:
    """A split of two examples: the first SHORT tokens of one and the first LONG of another
    (clm's packed blocks are all max_length long; truncating gives any length)."""
    long_rows = np.flatnonzero(split.lengths >= LONG)
    assert len(long_rows) >= 2, "the demo data should give rows of at least LONG tokens"
    picks = [(int(long_rows[0]), SHORT), (int(long_rows[1]), LONG)]
    ids, extra = [], {k: [] for k in split.extra}
    for i, n in picks:
        start = split.offsets[i]
        ids.append(split.input_ids[start : start + n])
        for key, arr in split.extra.items():
            assert len(arr) == len(split.input_ids), f"{key}: not per token"
            extra[key].append(arr[start : start + n])
    labels = None if split.labels is None else np.asarray(split.labels[[i for i, _ in picks]])
    return PreparedSplit(
        name="validation",
        input_ids=np.concatenate(ids),
        offsets=np.array([0, SHORT, SHORT + LONG]),
        labels=labels,
        extra={k: np.concatenate(v) for k, v in extra.items()},
    )


def fixed_masks(training: Any) -> None:
    """MLM draws its masks per batch (seeded by the batch's indices), so the short example
    would be masked differently alone and batched. Fix them: every third position of an
    attended, non-special token becomes [MASK]; the attention mask still comes from
    collate/pad_batch."""

    def mask(ids: torch.Tensor, attention: torch.Tensor, gen: Any) -> tuple[Any, Any]:
        picked = (~training.special[ids]) & attention.bool()
        picked &= (torch.arange(ids.shape[1]) % 3 == 1).expand_as(ids)
        labels = torch.where(picked, ids, torch.full_like(ids, -100))
        return torch.where(picked, torch.full_like(ids, training.mask_id), ids), labels

    training.mask = mask


def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    out = model(**inputs)
    return (out.prediction_logits if hasattr(out, "prediction_logits") else out.logits).float()


def per_token(logits: torch.Tensor) -> bool:
    return logits.dim() == 3


@pytest.mark.parametrize(("family", "task"), COMBOS, ids=[f"{f}-{t}" for f, t in COMBOS])
def test_a_short_example_scores_the_same_alone_and_batched_with_a_long_one(
    built, family: str, task: str
):
    training, model, split = built[family, task]
    if task == "mlm":
        fixed_masks(training)
    alone = training.collate(split, np.array([0]))
    together = training.collate(split, np.array([0, 1]))
    assert together["input_ids"].shape == (2, LONG)  # the short row is padded 3 -> 40
    assert torch.equal(alone["input_ids"][0], together["input_ids"][0, :SHORT])

    model.train()  # train-mode forward; dropout is 0 (model.dropout)
    with torch.no_grad():
        a, b = forward(model, alone)[0], forward(model, together)[0]
    if per_token(a.unsqueeze(0)):
        b = b[:SHORT]
    assert a.shape == b.shape
    diff = float((a - b).abs().max())
    assert diff <= ATOL, f"{family}/{task}: logits move by {diff:.3g} when batched"

    # evaluate: its loss and metrics over [short, long] one at a time vs in one batch.
    metrics = []
    for batch_size in (1, 2):
        result = training.evaluate(
            model, split, batch_size, torch.device("cpu"), contextlib.nullcontext
        )
        metrics.append({k: v for k, v in result.metrics.items() if isinstance(v, float)})
    assert metrics[0].keys() == metrics[1].keys() and "loss" in metrics[0]
    for key, value in metrics[0].items():
        # perplexity = exp(loss) is compared relatively: 1e-5 of a 400 is 2.5e-8 of a loss
        close = pytest.approx(value, rel=1e-6 if key == "perplexity" else 0, abs=ATOL)
        assert metrics[1][key] == close, f"{family}/{task} {key}"


@pytest.mark.parametrize(("family", "task"), COMBOS, ids=[f"{f}-{t}" for f, t in COMBOS])
def test_the_attention_mask_is_zero_exactly_on_the_pads(built, family: str, task: str):
    training, _, split = built[family, task]
    batch = training.collate(split, np.array([1, 0]))  # long first: the pads are row 1's
    lengths = torch.tensor([LONG, SHORT])
    want = (torch.arange(LONG)[None, :] < lengths[:, None]).long()
    assert torch.equal(batch["attention_mask"].long(), want)
    pads = want == 0
    assert torch.all(batch["input_ids"][pads] == training.pad_id)
    if batch["labels"].dim() == 2:  # per-token targets: nothing is learnt on a pad
        assert torch.all(batch["labels"][pads] == -100)
