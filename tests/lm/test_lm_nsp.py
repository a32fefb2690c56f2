"""Next-sentence-prediction pairs: nsp_pairs on documents of real email lines, `ftc
prepare` of an mlm_nsp recipe ([CLS] A [SEP] B [SEP], token types, NSP labels), the loss
of a batch without masked tokens, and `ftc train` learning NSP where it is easy."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.lm.conftest import email_line_groups, nsp_recipe, write_grouped_jsonl, write_recipe

IS_NEXT, RANDOM_NEXT = 0, 1


@pytest.fixture(scope="module")
def docs() -> list[list[str]]:
    """200 emails as documents of unique body lines (~1,800 segments)."""
    return email_line_groups(200)


def _records(docs: list[list[str]]) -> list[dict[str, Any]]:
    return [
        {"id": 0, "text": seg, "label": None, "group": f"doc-{d}"}
        for d, doc in enumerate(docs)
        for seg in doc
    ]


def _where(docs: list[list[str]]) -> dict[str, tuple[int, int]]:
    return {seg: (d, i) for d, doc in enumerate(docs) for i, seg in enumerate(doc)}


@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_pairs_are_next_segments_or_other_documents(docs, ratio: float) -> None:
    from fine_tune_cli.data.lm import nsp_pairs

    first, second, labels = nsp_pairs(_records(docs), ratio, seed=0)
    where = _where(docs)
    # One pair per segment that has a successor in its document.
    assert len(first) == len(second) == len(labels) == sum(len(d) - 1 for d in docs)
    assert set(labels) == {IS_NEXT, RANDOM_NEXT}
    for a, b, y in zip(first, second, labels, strict=True):
        (doc_a, i_a), (doc_b, i_b) = where[a], where[b]
        if y == IS_NEXT:
            assert (doc_b, i_b) == (doc_a, i_a + 1), (a, b)
        else:
            assert doc_b != doc_a, (a, b)
    # Every A segment is used once, in document order.
    assert [where[a] for a in first] == [
        (d, i) for d, doc in enumerate(docs) for i in range(len(doc) - 1)
    ]
    share = sum(labels) / len(labels)
    assert abs(share - ratio) < 0.05, share


def test_random_b_segments_do_not_give_the_label_away(docs) -> None:
    """A random B is drawn uniformly over segments, so a segment of a short document is
    no likelier to be a negative than one of a long document. Drawn per document, each
    segment of a 3-line email was a negative 3.6x as often as one of a 12-line email: B
    alone then predicts the label, a shortcut that fails on held-out documents."""
    from collections import Counter

    from fine_tune_cli.data.lm import nsp_pairs

    _, second, labels = nsp_pairs(_records(docs), 0.5, seed=0)
    doc_of = {seg: d for d, doc in enumerate(docs) for seg in doc}
    negatives = Counter(doc_of[b] for b, y in zip(second, labels, strict=True) if y)

    def per_segment(group: list[int]) -> float:
        return sum(negatives[d] for d in group) / sum(len(docs[d]) for d in group)

    short = [d for d, doc in enumerate(docs) if len(doc) <= 4]
    long = [d for d, doc in enumerate(docs) if len(doc) >= 10]
    assert len(short) >= 15 and len(long) >= 50
    assert 0.75 < per_segment(short) / per_segment(long) < 1.33


def test_pairs_are_reproducible_from_the_seed(docs) -> None:
    from fine_tune_cli.data.lm import nsp_pairs

    records = _records(docs)
    assert nsp_pairs(records, 0.5, seed=3) == nsp_pairs(records, 0.5, seed=3)
    assert nsp_pairs(records, 0.5, seed=3)[2] != nsp_pairs(records, 0.5, seed=4)[2]


def test_pairs_need_two_documents(docs) -> None:
    from fine_tune_cli.data.lm import nsp_pairs
    from fine_tune_cli.errors import DataError

    with pytest.raises(DataError, match="two documents"):
        nsp_pairs(_records(docs[:1]), 0.5, seed=0)


def test_pairs_group_documents_by_value_not_by_adjacent_rows(docs) -> None:
    """A document is a group value: rows of two documents that alternate in the file
    still pair each segment with the next segment of its own document."""
    from fine_tune_cli.data.lm import nsp_pairs

    a, b = docs[0][:4], docs[1][:4]
    records = [
        {"id": 0, "text": seg, "label": None, "group": group}
        for pair in zip(a, b, strict=True)
        for seg, group in zip(pair, ("a", "b"), strict=True)
    ]
    first, second, labels = nsp_pairs(records, 0.5, seed=0)
    where = _where([a, b])
    assert len(first) == 6, f"expected 3 pairs per 4-segment document, got {len(first)}"
    for x, y, label in zip(first, second, labels, strict=True):
        if label == IS_NEXT:
            assert where[y] == (where[x][0], where[x][1] + 1)
        else:
            assert where[y][0] != where[x][0]


def test_prepare_mlm_nsp_writes_pairs_with_token_types(ftc, tmp_path: Path) -> None:
    from fine_tune_cli.data.store import open_prepared
    from fine_tune_cli.data.tokenizers import load_tokenizer

    data = write_grouped_jsonl(tmp_path / "emails.jsonl", 40)
    recipe = nsp_recipe(tmp_path / "nsp.yaml", data, name="prep-nsp")
    result = ftc("prepare", recipe, "--json")
    assert result.code == 0, result.err
    path = Path(result.json()["outputs"]["prepared"])
    manifest = json.loads((path / "manifest.json").read_text())
    prepared = open_prepared(path)
    tok = load_tokenizer(path / "tokenizer")
    cls_id, sep_id, pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    for name in ("train", "validation", "test"):
        split = prepared.splits[name]
        assert len(split) > 0, name
        types = split.extra["token_type_ids"]
        assert len(types) == len(split.input_ids)  # one type per token
        assert split.labels is not None and set(np.unique(split.labels)) <= {0, 1}
        assert manifest["splits"][name]["negatives"] == int(split.labels.sum())
        for i in range(len(split)):
            ids = split.example(i).tolist()
            tt = types[split.offsets[i] : split.offsets[i + 1]].tolist()
            assert len(ids) <= 48 and pad_id not in ids
            assert ids[0] == cls_id and ids[-1] == sep_id and ids.count(sep_id) == 2
            a_end = ids.index(sep_id)  # [CLS] A [SEP] -> 0, then B [SEP] -> 1
            assert 1 < a_end < len(ids) - 2, ids  # neither segment is empty
            assert tt == [0] * (a_end + 1) + [1] * (len(ids) - a_end - 1), (ids, tt)
    train_labels = prepared.splits["train"].labels
    assert set(np.unique(train_labels)) == {0, 1}
    assert abs(float(train_labels.mean()) - 0.5) < 0.15


def test_prepare_mlm_nsp_without_any_pair_is_a_data_error(ftc, tmp_path: Path) -> None:
    """Documents of one segment each give no (A, B) pair at all: prepare must say so
    (exit 3) instead of writing empty splits (on which `ftc train` never finishes)."""
    rows = [
        {"text": doc[0], "email": f"email-{d:03d}"} for d, doc in enumerate(email_line_groups(30))
    ]
    data = tmp_path / "emails.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = ftc("prepare", nsp_recipe(tmp_path / "nsp.yaml", data, name="no-pairs"), "--json")
    assert result.code == 3, (result.code, result.out, result.err)
    assert result.json()["status"] == "error"


def test_batch_without_a_masked_token_has_a_finite_loss() -> None:
    """An epoch's last batch can hold a single short pair with no token selected for
    MLM: its loss is the NSP loss alone, not NaN (a mean over zero targets), which
    aborted such runs as diverged."""
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertForPreTraining

    from fine_tune_cli.data.tokenizers import train_tokenizer
    from fine_tune_cli.recipe import MLMSpec
    from fine_tune_cli.tasks.mlm_nsp import MaskedLMNextSentenceTask

    docs = email_line_groups(20)
    tok = train_tokenizer("wordpiece", lambda: (s for d in docs for s in d), 300, 2, True)
    task = MaskedLMNextSentenceTask(tok, MLMSpec(), seed=0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    model = BertForPreTraining(config).eval()  # no dropout: two forwards agree
    enc = tok(docs[0][0], docs[0][1], return_tensors="pt", return_token_type_ids=True)
    batch = {
        **enc,
        "labels": torch.full_like(enc["input_ids"], -100),  # nothing selected
        "next_sentence_label": torch.tensor([IS_NEXT]),
    }
    assert task.units(batch) == 1
    loss = task.loss(model, batch)
    assert torch.isfinite(loss)
    _, nsp_logits = task.outputs(model, batch)
    nsp_loss = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
    assert loss.item() == pytest.approx(nsp_loss.item())


def _topic_corpus(path: Path, n_docs: int = 200, n_topics: int = 10) -> Path:
    """jsonl rows {text, doc}: each document draws its 8 segments from one of `n_topics`
    disjoint 12-word vocabularies (made-up words). A B segment from another document
    almost always (9 times in 10) comes from another vocabulary, so NSP can be learned
    from word identity alone: a model that stays at chance has a bug, not too little
    training."""
    rng = random.Random(0)
    words: list[str] = []
    while len(words) < 12 * n_topics:
        word = "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(2))
        if word not in words:
            words.append(word)
    rows = [
        {"text": " ".join(rng.choices(words[12 * (d % n_topics) :][:12], k=6)), "doc": f"d{d}"}
        for d in range(n_docs)
        for _ in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_nsp_head_learns_pairs_of_a_learnable_corpus(ftc, tmp_path: Path) -> None:
    """End to end through `ftc train`: on a corpus where next-sentence prediction is easy,
    the NSP head must beat chance by far (a head that predicts a constant, at
    nsp_loss ~ ln 2, means labels, token types or the NSP loss term are broken)."""
    data = _topic_corpus(tmp_path / "topics.jsonl")
    recipe = write_recipe(
        tmp_path / "nsp-topics.yaml",
        {
            "name": "nsp-topics",
            "model": {"family": "bert", "task": "mlm_nsp", "size": "tiny", "dropout": 0.0},
            "data": {
                "source": {"path": data.name, "text": "text", "label": None, "group": "doc"},
                "split": {"validation": 0.2, "test": 0.1, "by_group": True, "seed": 0},
                "tokenizer": {"kind": "wordpiece", "vocab_size": 300},
                "max_length": 32,
            },
            "optim": {"name": "adamw", "lr": 1e-3},
            # A tiny BERT sits on a plateau (NSP and MLM at chance) for ~200 steps before
            # attention forms; a constant LR gets it past that in this budget.
            "schedule": {"name": "constant"},
            "train": {"max_steps": 400, "batch_size": 32, "eval_every": 400, "seed": 0},
        },
    )
    result = ftc("train", recipe, "--json")
    assert result.code == 0, result.err
    metrics = result.json()["metrics"]
    assert metrics["nsp_accuracy"] > 0.85, metrics
    assert metrics["nsp_loss"] < 0.45, metrics
