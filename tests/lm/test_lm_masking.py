"""MaskedLMTask masking statistics on real text with a locally trained WordPiece: what is
selected (15% of non-special tokens), how it is corrupted (80/10/10), the labels, the
per-batch determinism, and whole-word masking."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.lm.conftest import email_bodies

MAX_LEN = 128


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from fine_tune_cli.data.tokenizers import train_tokenizer

    # A small vocabulary, so many words split into several "##" pieces.
    bodies = email_bodies(300)
    return train_tokenizer("wordpiece", lambda: iter(bodies), 400, 2, True)


@pytest.fixture(scope="module")
def batch(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """~25k tokens of real email text, padded to MAX_LEN ([CLS]/[SEP]/[PAD] included)."""
    enc = tokenizer(
        email_bodies(300),
        padding="max_length",
        truncation=True,
        max_length=MAX_LEN,
        return_tensors="pt",
    )
    return enc["input_ids"], enc["attention_mask"]


def _task(tokenizer: Any, seed: int = 0, **mlm: Any) -> Any:
    from fine_tune_cli.recipe import MLMSpec
    from fine_tune_cli.tasks.mlm import MaskedLMTask

    return MaskedLMTask(tokenizer, MLMSpec(**mlm), seed=seed)


def _special_mask(tokenizer: Any, ids: torch.Tensor) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(sorted(tokenizer.all_special_ids)))


def test_special_and_padding_tokens_are_never_selected_or_changed(tokenizer, batch) -> None:
    ids, attention = batch
    special = _special_mask(tokenizer, ids)
    assert special.any() and (attention == 0).any()  # the batch has both to protect
    task = _task(tokenizer)
    for seed in range(2):
        masked, labels = task.mask(ids, attention, torch.Generator().manual_seed(seed))
        assert not (labels[special] != -100).any()
        assert not (labels[attention == 0] != -100).any()
        assert torch.equal(masked[special], ids[special])


def test_selection_rate_and_80_10_10_split(tokenizer, batch) -> None:
    ids, attention = batch
    task = _task(tokenizer)
    masked, labels = task.mask(ids, attention, torch.Generator().manual_seed(1))
    candidates = ~_special_mask(tokenizer, ids) & attention.bool()
    selected = labels != -100
    n_cand, n_sel = int(candidates.sum()), int(selected.sum())
    assert n_cand > 20_000
    assert abs(n_sel / n_cand - 0.15) < 0.01

    mask_id = tokenizer.mask_token_id
    as_mask = selected & (masked == mask_id)
    as_random = selected & (masked != mask_id) & (masked != ids)
    kept = selected & (masked == ids)
    assert int(as_mask.sum() + as_random.sum() + kept.sum()) == n_sel
    # A random replacement can hit the original token (1/vocab): a sliver of "kept".
    assert abs(int(as_mask.sum()) / n_sel - 0.8) < 0.03
    assert abs(int(as_random.sum()) / n_sel - 0.1) < 0.025
    assert abs(int(kept.sum()) / n_sel - 0.1) < 0.025
    assert int(masked.min()) >= 0 and int(masked.max()) < len(tokenizer)


def test_labels_are_the_original_ids_exactly_where_selected(tokenizer, batch) -> None:
    ids, attention = batch
    masked, labels = _task(tokenizer).mask(ids, attention, torch.Generator().manual_seed(2))
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])
    assert torch.all(labels[~selected] == -100)
    # Nothing outside the selection is touched: every changed token carries a label.
    assert torch.equal(masked[~selected], ids[~selected])


def test_ratios_follow_the_spec(tokenizer, batch) -> None:
    ids, attention = batch
    task = _task(tokenizer, probability=0.3, mask_ratio=1.0, random_ratio=0.0)
    masked, labels = task.mask(ids, attention, torch.Generator().manual_seed(3))
    candidates = ~_special_mask(tokenizer, ids) & attention.bool()
    selected = labels != -100
    assert abs(int(selected.sum()) / int(candidates.sum()) - 0.3) < 0.015
    assert torch.all(masked[selected] == tokenizer.mask_token_id)


def _split_of(rows: list[list[int]]) -> Any:
    from fine_tune_cli.data.store import PreparedSplit

    lengths = [len(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.asarray([t for r in rows for t in r], dtype=np.int32)
    return PreparedSplit(name="train", input_ids=flat, offsets=offsets, labels=None)


def test_masks_are_seeded_by_batch_indices(tokenizer) -> None:
    """Same indices -> same mask (resume reproduces it); other indices or another run
    seed -> another mask, even over identical content (dynamic masking)."""
    row = tokenizer(email_bodies(1)[0], truncation=True, max_length=MAX_LEN)["input_ids"]
    split = _split_of([row] * 8)  # identical rows: only the indices tell batches apart
    task = _task(tokenizer, seed=7)
    first = task.collate(split, np.array([0, 1, 2, 3]))
    again = _task(tokenizer, seed=7).collate(split, np.array([0, 1, 2, 3]))
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert torch.equal(first["labels"], again["labels"])
    assert (first["labels"] != -100).any()

    other = task.collate(split, np.array([4, 5, 6, 7]))
    assert not torch.equal(first["labels"], other["labels"])
    reseeded = _task(tokenizer, seed=8).collate(split, np.array([0, 1, 2, 3]))
    assert not torch.equal(first["labels"], reseeded["labels"])
    # Rows within one batch are masked independently too.
    assert not all(torch.equal(first["labels"][0], first["labels"][j]) for j in range(1, 4))


def _words(ids: torch.Tensor, tokenizer: Any, candidates: torch.Tensor) -> list[list[int]]:
    """Positions of each word in a row: a non-"##" candidate and the "##" pieces after it."""
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    words: list[list[int]] = []
    for pos, piece in enumerate(pieces):
        if not candidates[pos]:
            continue
        if piece.startswith("##") and words and words[-1][-1] == pos - 1:
            words[-1].append(pos)
        else:
            words.append([pos])
    return words


def test_whole_word_masks_all_pieces_of_a_word_together(tokenizer, batch) -> None:
    ids, attention = batch
    ids, attention = ids[:120], attention[:120]
    task = _task(tokenizer, whole_word=True)
    masked, labels = task.mask(ids, attention, torch.Generator().manual_seed(4))
    candidates = ~_special_mask(tokenizer, ids) & attention.bool()
    selected = labels != -100
    multi = chosen_multi = n_words = chosen_words = 0
    for r in range(ids.shape[0]):
        for word in _words(ids[r], tokenizer, candidates[r]):
            picked = [bool(selected[r, p]) for p in word]
            assert all(picked) or not any(picked), (
                f"row {r}: word {tokenizer.convert_ids_to_tokens(ids[r, word].tolist())}"
                f" partly selected {picked}"
            )
            n_words += 1
            chosen_words += picked[0]
            if len(word) > 1:
                multi += 1
                chosen_multi += picked[0]
    assert multi > 500 and chosen_multi > 30  # the property was exercised
    assert abs(chosen_words / n_words - 0.15) < 0.02  # 15% of words
    assert not (selected & ~candidates).any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
