"""Next-sentence-prediction pairs: nsp_pairs on documents of real email lines, and
`ftc prepare` of an mlm_nsp recipe ([CLS] A [SEP] B [SEP], token types, NSP labels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.lm.conftest import email_line_groups, nsp_recipe, write_grouped_jsonl

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
