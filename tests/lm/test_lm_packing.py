"""Packing through `ftc prepare`: CLM documents joined by EOS and cut into equal blocks,
MLM blocks wrapped in [CLS] ... [SEP]; no padding, and no token lost or duplicated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.lm.conftest import clm_recipe, mlm_recipe, write_paragraph_corpus

SPLITS = ("train", "validation", "test")


def _prepare(ftc, recipe: Path) -> Path:
    result = ftc("prepare", recipe, "--json")
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["status"] == "ok" and payload["labels"] == []
    return Path(payload["outputs"]["prepared"])


def _split_streams(recipe_path: Path, prepared: Path, separator: str) -> dict[str, np.ndarray]:
    """Per split, the token stream prepare should pack: each document's ids followed by
    the separator, documents in split order. Split membership is recomputed with
    prepare's own reader and splitter; the tokenizer is the prepared one."""
    from fine_tune_cli.data.prepare import load_records, split_records
    from fine_tune_cli.data.tokenizers import load_tokenizer
    from fine_tune_cli.recipe import load_recipe

    recipe = load_recipe(recipe_path).recipe
    records, _ = load_records(recipe)
    splits = split_records(recipe, records)
    tok = load_tokenizer(prepared / "tokenizer")
    sep = tok.convert_tokens_to_ids(separator)
    streams = {}
    for name in SPLITS:
        texts = [r["text"] for r in splits[name]]
        ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
        streams[name] = np.asarray([t for doc in ids for t in (*doc, sep)], dtype=np.int64)
    return streams


def _blocks(prepared: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from fine_tune_cli.data.store import open_prepared

    data = open_prepared(prepared).splits[split]
    return np.asarray(data.input_ids, dtype=np.int64), np.asarray(data.offsets)


def test_clm_packing_is_exact_and_unpadded(ftc, tmp_path: Path) -> None:
    from fine_tune_cli.data.tokenizers import load_tokenizer

    block = 32
    corpus = write_paragraph_corpus(tmp_path / "corpus.txt", 150)
    recipe = clm_recipe(tmp_path / "clm.yaml", corpus, name="pack-clm")
    prepared = _prepare(ftc, recipe)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "bpe"
    streams = _split_streams(recipe, prepared, "<|endoftext|>")
    eos_id = load_tokenizer(prepared / "tokenizer").eos_token_id
    total_docs = 0
    for name in SPLITS:
        info = manifest["splits"][name]
        ids, offsets = _blocks(prepared, name)
        stream = streams[name]
        n_blocks = len(offsets) - 1
        assert n_blocks > 0, name
        # Every block is exactly max_length tokens; nothing is padding.
        assert np.all(np.diff(offsets) == block), name
        assert info["padding_tokens"] == 0
        assert info["examples"] == n_blocks and info["tokens"] == n_blocks * block == len(ids)
        # All corpus tokens are accounted for: packed blocks + the dropped short tail.
        assert info["corpus_tokens"] == len(stream), name
        assert info["corpus_tokens"] == n_blocks * block + info["dropped_tail_tokens"]
        assert 0 <= info["dropped_tail_tokens"] < block
        # The blocks, in order, are exactly the head of the stream: each block is the
        # contiguous slice that follows the previous one (no gap, overlap or duplicate).
        np.testing.assert_array_equal(ids, stream[: n_blocks * block])
        total_docs += int((stream == eos_id).sum())  # one EOS per document
    # The three splits together hold every paragraph of the corpus once.
    assert total_docs == len(corpus.read_text().strip().split("\n\n")) == 150


def test_mlm_packing_wraps_each_block_in_cls_sep(ftc, tmp_path: Path) -> None:
    from fine_tune_cli.data.tokenizers import load_tokenizer

    block = 32
    corpus = write_paragraph_corpus(tmp_path / "corpus.txt", 80)
    recipe = mlm_recipe(tmp_path / "mlm.yaml", corpus, name="pack-mlm")
    prepared = _prepare(ftc, recipe)
    manifest = json.loads((prepared / "manifest.json").read_text())
    tok = load_tokenizer(prepared / "tokenizer")
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    streams = _split_streams(recipe, prepared, "[SEP]")
    for name in SPLITS:
        info = manifest["splits"][name]
        ids, offsets = _blocks(prepared, name)
        n_blocks = len(offsets) - 1
        assert n_blocks > 0, name
        assert np.all(np.diff(offsets) == block) and info["padding_tokens"] == 0
        rows = ids.reshape(n_blocks, block)
        assert np.all(rows[:, 0] == cls_id) and np.all(rows[:, -1] == sep_id)
        body = rows[:, 1:-1].reshape(-1)
        stream = streams[name]
        assert info["corpus_tokens"] == len(stream)
        assert info["corpus_tokens"] == n_blocks * (block - 2) + info["dropped_tail_tokens"]
        np.testing.assert_array_equal(body, stream[: n_blocks * (block - 2)])


@pytest.mark.parametrize("wrap", [None, (101, 102)])
def test_write_packed_keeps_a_short_split_whole(tmp_path: Path, wrap) -> None:
    """A split shorter than one block is kept (as its only example), never dropped."""
    from fine_tune_cli.data.lm import write_packed

    docs = [np.arange(1, 6, dtype=np.int32), np.arange(10, 13, dtype=np.int32)]
    info = write_packed(tmp_path, "tiny", iter(docs), block=32, wrap=wrap)
    ids = np.load(tmp_path / "tiny" / "input_ids.npy")
    body = [1, 2, 3, 4, 5, 10, 11, 12]
    assert ids.tolist() == ([*body] if wrap is None else [101, *body, 102])
    assert info["examples"] == 1 and info["dropped_tail_tokens"] == 0
    assert info["corpus_tokens"] == 8 and info["padding_tokens"] == 0
    assert not (tmp_path / "tiny" / "stream.tmp").exists()
