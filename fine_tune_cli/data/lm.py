"""Language-model encoders for prepare: packed blocks for causal LM (GPT-2) and masked LM
(BERT), and sentence pairs for MLM + next-sentence prediction.

Packing streams token ids to disk so the corpus never has to fit in RAM, and uses no
padding at all: documents are joined with EOS (CLM) and cut into equal blocks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fine_tune_cli.data.prepare import SPLITS, build_tokenizer
from fine_tune_cli.data.shards import finish_packed_split
from fine_tune_cli.data.steps import Record
from fine_tune_cli.errors import DataError, RecipeError
from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")

BATCH = 1000  # documents tokenized per call (fast tokenizer batches)


def _token_stream(tokenizer: Any, texts: list[str], separator: int | None) -> Iterator[np.ndarray]:
    """Token ids of the documents in order, each followed by `separator` when given."""
    for start in range(0, len(texts), BATCH):
        enc = tokenizer(
            texts[start : start + BATCH], add_special_tokens=False, return_attention_mask=False
        )
        for ids in enc["input_ids"]:
            if separator is not None:
                ids = [*ids, separator]
            yield np.asarray(ids, dtype=np.int32)


def write_packed(
    out: Path,
    name: str,
    stream: Iterator[np.ndarray],
    block: int,
    wrap: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Cut a token stream into equal blocks of `block` ids, written memory-mapped.

    With `wrap=(cls, sep)` each block holds block-2 corpus tokens between them (BERT).
    The tail shorter than a block is dropped, unless it is the split's only data."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    raw_path = folder / "stream.tmp"
    total = 0
    with open(raw_path, "wb") as raw:
        for ids in stream:
            raw.write(ids.tobytes())
            total += len(ids)
    body = block - 2 if wrap else block
    n_blocks = total // body
    keep_tail = n_blocks == 0 and total > 0
    lengths = [body] * n_blocks + ([total] if keep_tail else [])
    used = sum(lengths)
    stream_arr = np.memmap(raw_path, dtype=np.int32, mode="r", shape=(total,)) if total else None
    width = [n + (2 if wrap else 0) for n in lengths]
    out_len = int(sum(width))
    ids = np.lib.format.open_memmap(folder / "input_ids.npy", "w+", np.int32, (out_len,))
    pos = src = 0
    for n in lengths:
        if wrap:
            ids[pos] = wrap[0]
            ids[pos + 1 : pos + 1 + n] = stream_arr[src : src + n]
            ids[pos + 1 + n] = wrap[1]
        else:
            ids[pos : pos + n] = stream_arr[src : src + n]
        pos += n + (2 if wrap else 0)
        src += n
    ids.flush()
    del ids, stream_arr
    raw_path.unlink()
    return finish_packed_split(folder, width, out_len, total, used)


def encode_clm(
    recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
) -> dict[str, Any]:
    """GPT-2 causal LM: documents joined by EOS, packed into blocks of max_length."""
    tokenizer, info = build_tokenizer(recipe, splits, out)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise RecipeError("data.tokenizer: causal LM needs a tokenizer with an EOS token (bpe)")
    split_info = {
        name: write_packed(
            out,
            name,
            _token_stream(tokenizer, [r["text"] for r in splits[name]], eos),
            recipe.data.max_length,
        )
        for name in SPLITS
    }
    return {"tokenizer": info, "splits": split_info}


def encode_mlm(
    recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
) -> dict[str, Any]:
    """BERT masked LM: the corpus packed into [CLS] ... [SEP] blocks of max_length."""
    tokenizer, info = build_tokenizer(recipe, splits, out)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None or tokenizer.mask_token_id is None:
        raise RecipeError(
            "data.tokenizer: masked LM needs [CLS], [SEP] and [MASK] tokens (a wordpiece tokenizer)"
        )
    split_info = {
        name: write_packed(
            out,
            name,
            _token_stream(tokenizer, [r["text"] for r in splits[name]], sep_id),
            recipe.data.max_length,
            wrap=(cls_id, sep_id),
        )
        for name in SPLITS
    }
    return {"tokenizer": info, "splits": split_info}


def nsp_pairs(
    records: list[Record], negative_ratio: float, seed: int
) -> tuple[list[str], list[str], list[int]]:
    """(A, B, label) pairs of consecutive segments within each document (label 0, "is
    next") or, with probability `negative_ratio`, B from another document (label 1).

    A random B is drawn uniformly over all segments of the other documents, not by first
    picking a document: with documents of unequal length (books of 21 and 2,461 verses)
    a per-document draw makes every segment of a short document a negative B many times
    over, so B alone gives the label away (71% on KJV's train books) and the NSP head
    learns which segments are "random" instead of whether B follows A, a cue that does
    not carry over to held-out documents."""
    by_group: dict[object, list[str]] = {}
    for r in records:  # file order within each document
        by_group.setdefault(r.get("group"), []).append(r["text"])
    docs = list(by_group.values())
    if len(docs) < 2:
        raise DataError(
            "data.source.group: mlm_nsp needs at least two documents (groups) per split;"
            f" found {len(docs)}"
        )
    segments = [seg for doc in docs for seg in doc]
    rng = random.Random(seed)
    first, second, labels = [], [], []
    start = 0  # index of this document's first segment in `segments`
    for doc in docs:
        for i in range(len(doc) - 1):
            first.append(doc[i])
            if rng.random() < negative_ratio:
                other = rng.randrange(len(segments) - len(doc))
                other += len(doc) if other >= start else 0  # skip this document's segments
                second.append(segments[other])
                labels.append(1)
            else:
                second.append(doc[i + 1])
                labels.append(0)
        start += len(doc)
    return first, second, labels


def encode_mlm_nsp(
    recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
) -> dict[str, Any]:
    """BERT pretraining pairs: [CLS] A [SEP] B [SEP] with token_type_ids and NSP labels."""
    from fine_tune_cli.data.store import write_split

    tokenizer, info = build_tokenizer(recipe, splits, out)
    split_info = {}
    for offset, name in enumerate(SPLITS):
        rows = splits[name]
        if not rows:
            split_info[name] = write_split(out, name, [], [], None)
            continue
        a, b, y = nsp_pairs(rows, recipe.data.nsp_negative_ratio, recipe.data.split.seed + offset)
        ids, types = [], []
        for start in range(0, len(a), BATCH):
            enc = tokenizer(
                a[start : start + BATCH],
                b[start : start + BATCH],
                truncation="longest_first",
                max_length=recipe.data.max_length,
                return_token_type_ids=True,
                return_attention_mask=False,
            )
            ids.extend(enc["input_ids"])
            types.extend(enc["token_type_ids"])
        flat_types = np.fromiter((t for row in types for t in row), dtype=np.int8)
        split_info[name] = write_split(
            out, name, ids, y, None, extra={"token_type_ids": flat_types}
        )
        split_info[name]["negatives"] = int(sum(y))
    if not split_info["train"]["examples"]:
        raise DataError(
            f"{recipe.data.source.path}: no sentence pairs: every document in column"
            f" '{recipe.data.source.group}' has a single segment (data.source.group)"
        )
    return {"tokenizer": info, "splits": split_info}
