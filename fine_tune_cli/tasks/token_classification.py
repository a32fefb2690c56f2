"""Token classification: one tag per word (BIO entity tags, supersenses, POS), learned from
partially labelled sentences.

A word's tag sits on its first sub-token; its other sub-tokens and every word whose tag
is null (not annotated) get IGNORE, so they count in neither the loss nor the metrics.
Metrics: `token_accuracy` (exact tag of each annotated word), entity-level `precision`,
`recall`, `f1` as seqeval computes them for BIO tags (null-tagged words dropped from both
sequences first), and `baseline_token_accuracy`: each word's most frequent tag in the
train split (lower-cased; unseen words get the majority tag), the figure a model has to
beat to show it reads context.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fine_tune_cli.data.batching import pad_batch
from fine_tune_cli.errors import DataError, RecipeError
from fine_tune_cli.tasks.base import (
    Autocast,
    EvalResult,
    Predictions,
    batches_in_eval_mode,
    no_grad,
    register_task,
)
from fine_tune_cli.tasks.modality import TextTask

if TYPE_CHECKING:
    import torch

    from fine_tune_cli.data.steps import Record
    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")

IGNORE = -100  # cross_entropy's ignore_index: sub-tokens after the first, null tags, padding
BIO_TAG = re.compile(r"(O|[BIES]-.+)")
TOKENIZE_BATCH = 1000


# --------------------------------------------------------------------------- prepare
def tag_names(records: list[Record], shown: str) -> list[str]:
    """Every annotated tag of the source, sorted (a tag seen only in test still gets an id,
    so it is scored as a miss)."""
    counts = Counter(t for r in records for t in r["tags"] if t is not None)
    if not counts:
        raise DataError(f"{shown}: no annotated word (every tag is null)")
    if len(counts) < 2:
        raise DataError(
            f"{shown}: only one tag ({next(iter(counts))!r}); token classification needs two"
        )
    return sorted(counts)


def baseline_tags(train: list[Record]) -> tuple[dict[str, str], str]:
    """(lower-cased word -> its most frequent train tag, the majority train tag). Ties go
    to the alphabetically first tag, so the baseline does not depend on file order."""
    by_word: dict[str, Counter[str]] = {}
    overall: Counter[str] = Counter()
    for r in train:
        for token, tag in zip(r["tokens"], r["tags"], strict=True):
            if tag is not None:
                by_word.setdefault(token.lower(), Counter())[tag] += 1
                overall[tag] += 1

    def most_frequent(counts: Counter[str]) -> str:
        return min(counts, key=lambda t: (-counts[t], t))

    return {w: most_frequent(c) for w, c in by_word.items()}, most_frequent(overall)


def first_subtoken_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Per sub-token labels: the word's label on its first sub-token, IGNORE elsewhere
    (special tokens, continuation pieces, words labelled IGNORE)."""
    out, previous = [], None
    for w in word_ids:
        out.append(word_labels[w] if w is not None and w != previous else IGNORE)
        previous = w
    return out


def encode_words(
    tokenizer: Any, sentences: list[list[str]], max_length: int
) -> tuple[list[list[int]], list[list[int | None]]]:
    """Token ids and word ids (`word_ids()`) of pre-split sentences, truncated."""
    if not getattr(tokenizer, "is_fast", False):
        raise RecipeError("data.tokenizer: token classification needs a fast tokenizer")
    ids: list[list[int]] = []
    words: list[list[int | None]] = []
    for start in range(0, len(sentences), TOKENIZE_BATCH):
        enc = tokenizer(
            sentences[start : start + TOKENIZE_BATCH],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
        )
        ids.extend(enc["input_ids"])
        words.extend(enc.word_ids(i) for i in range(len(enc["input_ids"])))
    return ids, words


def encode_tagged(
    recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
) -> dict[str, Any]:
    """Sub-token ids per sentence with per-sub-token `tag_ids` (gold) and `baseline_ids`
    (the per-word baseline's tag), both IGNORE off the first sub-token of annotated words."""
    from fine_tune_cli.data.prepare import SPLITS, build_tokenizer
    from fine_tune_cli.data.store import write_split

    shown = recipe.data.source.path
    for rows in splits.values():
        for r in rows:
            if r["text"] != " ".join(r["tokens"]):
                raise RecipeError(
                    "data.steps: a step changed the text of a tagged sentence; token"
                    " classification takes only steps that keep or drop whole records"
                )
    if not any(t is not None for r in splits["train"] for t in r["tags"]):
        raise DataError(f"{shown}: no annotated word in the train split (every tag is null)")
    index = {t: i for i, t in enumerate(labels)}
    table, majority = baseline_tags(splits["train"])
    tokenizer, tok_info = build_tokenizer(recipe, splits, out)
    split_info: dict[str, Any] = {}
    for name in SPLITS:
        rows = splits[name]
        ids, word_ids = encode_words(tokenizer, [r["tokens"] for r in rows], recipe.data.max_length)
        gold, base, cut = [], [], 0
        for r, w in zip(rows, word_ids, strict=True):
            tags = [IGNORE if t is None else index[t] for t in r["tags"]]
            guess = [
                IGNORE if t is None else index[table.get(tok.lower(), majority)]
                for tok, t in zip(r["tokens"], r["tags"], strict=True)
            ]
            gold.append(first_subtoken_labels(w, tags))
            base.append(first_subtoken_labels(w, guess))
            kept = {x for x in w if x is not None}
            cut += sum(1 for i, t in enumerate(tags) if t != IGNORE and i not in kept)
        flat = {
            "tag_ids": np.fromiter((t for g in gold for t in g), dtype=np.int32),
            "baseline_ids": np.fromiter((t for b in base for t in b), dtype=np.int32),
        }
        info = write_split(out, name, ids, None, [r["text"] for r in rows], extra=flat)
        info["tagged_words"] = int((flat["tag_ids"] != IGNORE).sum())
        info["truncated_tagged_words"] = cut
        counts = Counter(t for r in rows for t in r["tags"] if t is not None)
        info["tag_counts"] = {t: counts.get(t, 0) for t in labels}
        split_info[name] = info
        if cut:
            log.warning(
                "%s split: %d annotated words have no token (beyond data.max_length=%d, or"
                " nothing left after tokenization): not trained on or scored",
                name,
                cut,
                recipe.data.max_length,
            )
    return {"tokenizer": tok_info, "splits": split_info}


# --------------------------------------------------------------------------- metrics
def is_bio(names: list[str]) -> bool:
    return all(BIO_TAG.fullmatch(n) for n in names)


def tagging_metrics(
    gold: list[list[str]],
    pred: list[list[str]],
    baseline: list[list[str]],
    bio: bool,
    loss: float | None = None,
) -> dict[str, Any]:
    """token_accuracy and baseline_token_accuracy over the annotated words; for BIO tag
    sets also seqeval's entity-level micro precision/recall/f1 and per-type figures.
    The sequences hold annotated words only (null-tagged words are dropped first)."""
    total = sum(len(g) for g in gold)
    if total == 0:
        raise DataError("no annotated words to score (every tag of the split is null)")
    correct, base = _matches(gold, pred), _matches(gold, baseline)
    out: dict[str, Any] = {
        "token_accuracy": correct / total,
        "baseline_token_accuracy": base / total,
        "tagged_words": total,
        "num_examples": len(gold),
    }
    if loss is not None:
        out["loss"] = float(loss)
    if bio:
        from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

        kept = [(g, p) for g, p in zip(gold, pred, strict=True) if g]
        y_true, y_pred = [g for g, _ in kept], [p for _, p in kept]
        out["precision"] = float(precision_score(y_true, y_pred, zero_division=0))
        out["recall"] = float(recall_score(y_true, y_pred, zero_division=0))
        out["f1"] = float(f1_score(y_true, y_pred, zero_division=0))
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
        out["per_class"] = {
            name: {
                "precision": float(v["precision"]),
                "recall": float(v["recall"]),
                "f1": float(v["f1-score"]),
                "support": int(v["support"]),
            }
            for name, v in report.items()
            if not name.endswith(" avg")
        }
    return out


def _matches(gold: list[list[str]], other: list[list[str]]) -> int:
    return sum(a == b for g, o in zip(gold, other, strict=True) for a, b in zip(g, o, strict=True))


# --------------------------------------------------------------------------- task
@register_task
class TokenClassificationTask(TextTask):
    """One tag per word: cross-entropy on annotated words' first sub-tokens."""

    name = "token_classification"
    recipe_task = "token_classification"
    needs_labels = True
    primary_metric = "token_accuracy"  # gated by export parity
    unit = "tagged words"
    predictable = True

    def __init__(self, pad_id: int, label_names: list[str]):
        self.pad_id = pad_id
        self.label_names = label_names
        self.bio = is_bio(label_names)

    # ---- before data ---------------------------------------------------------------
    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        problems = []
        if not recipe.data.source.label:
            problems.append(
                "data.source.label: token classification needs the field holding the tag"
                " list (e.g. tags)"
            )
        if recipe.data.balance != "none":
            problems.append(
                f"data.balance: '{recipe.data.balance}' balances whole examples by label;"
                " token classification has tags per word (use none)"
            )
        if recipe.data.augment:
            problems.append(
                "data.augment: text augmentation would move words away from their tags;"
                " token classification takes none"
            )
        return problems

    @classmethod
    def read_source(cls, source: Any, need_label: bool) -> list[Record]:
        from fine_tune_cli.data.tagged_sources import read_tagged

        return read_tagged(source, need_tags=need_label)

    @classmethod
    def label_names(cls, recipe: Recipe, records: list[Record]) -> list[str]:
        return tag_names(records, recipe.data.source.path or "")

    @classmethod
    def encode(
        cls, recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
    ) -> dict[str, Any]:
        # The task's recipe rules again, in case a caller skipped recipe validation: a
        # balance by whole-example label would otherwise crash on records without one.
        problems = cls.recipe_problems(recipe)
        if problems:
            raise RecipeError(problems)
        return encode_tagged(recipe, splits, labels, out)

    @classmethod
    def predict(cls, loaded: Any, source: str) -> Predictions:
        from fine_tune_cli.data.tagged_sources import read_prediction_inputs

        rows = predict_rows(loaded, read_prediction_inputs(source, loaded.recipe.data.source))
        counts = Counter(t for row in rows for t in row["tags"] if t is not None)
        return Predictions(rows, {label: counts.get(label, 0) for label in loaded.labels})

    @classmethod
    def from_recipe(cls, recipe: Recipe, prepared: Any) -> TokenClassificationTask:
        return cls(pad_id=prepared.tokenizer.pad_token_id, label_names=prepared.label_names)

    # ---- one run -------------------------------------------------------------------
    def collate(self, split: PreparedSplit, indices: np.ndarray) -> dict[str, torch.Tensor]:
        batch = pad_batch(split, indices, self.pad_id)
        batch["labels"] = per_token(split, "tag_ids", indices, batch["input_ids"].shape)
        return batch

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return max(1, int((batch["labels"] != IGNORE).sum()))

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed over annotated words / their count (at least 1): a micro-batch whose
        words are all null-tagged gives 0, not NaN."""
        return summed_loss(self.logits(model, batch), batch["labels"]) / self.units(batch)

    @no_grad
    def evaluate(
        self,
        model: torch.nn.Module,
        split: PreparedSplit,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> EvalResult:
        names = self.label_names
        gold: list[list[str]] = []
        pred: list[list[str]] = []
        base: list[list[str]] = []
        loss_sum = 0.0
        for idx, batch in batches_in_eval_mode(self, model, split, batch_size, device):
            with autocast():
                logits = self.logits(model, batch)
            loss_sum += float(summed_loss(logits, batch["labels"]))
            labels = batch["labels"].cpu().numpy()
            top = logits.argmax(-1).cpu().numpy()
            guess = per_token(split, "baseline_ids", idx, labels.shape).numpy()
            for j in range(len(idx)):
                at = labels[j] != IGNORE  # first sub-tokens of annotated words, in order
                gold.append([names[t] for t in labels[j][at]])
                pred.append([names[t] for t in top[j][at]])
                base.append([names[t] for t in guess[j][at]])
        words = sum(len(g) for g in gold)
        metrics = tagging_metrics(gold, pred, base, self.bio, loss=loss_sum / max(1, words))
        return EvalResult(metrics)


def per_token(
    split: PreparedSplit, key: str, indices: np.ndarray, shape: tuple[int, ...]
) -> torch.Tensor:
    """A per-sub-token array of the split for a batch, padded with IGNORE."""
    import torch

    out = np.full(tuple(shape), IGNORE, dtype=np.int64)
    values = split.extra[key]
    for j, i in enumerate(indices):
        row = values[split.offsets[i] : split.offsets[i + 1]]
        out[j, : len(row)] = row
    return torch.from_numpy(out)


def summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the annotated positions (IGNORE elsewhere)."""
    import torch.nn.functional as F

    logits = logits.float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


# --------------------------------------------------------------------------- predict
def predict_rows(loaded: Any, records: list[Record], batch_size: int = 64) -> list[dict[str, Any]]:
    """`{"id", "tokens", "tags", "scores"}` per sentence: each word's argmax tag on its
    first sub-token and that tag's probability; a word cut off by data.max_length gets
    null for both."""
    import torch

    from fine_tune_cli.console import Progress

    ids, word_ids = encode_words(
        loaded.tokenizer, [r["tokens"] for r in records], loaded.recipe.data.max_length
    )
    pad = loaded.tokenizer.pad_token_id or 0
    rows: list[dict[str, Any]] = []
    batches = -(-len(ids) // batch_size)
    with Progress(batches, unit="batch", name="predict") as progress:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            input_ids = np.full((len(chunk), max(map(len, chunk))), pad, dtype=np.int64)
            mask = np.zeros_like(input_ids)
            for j, x in enumerate(chunk):
                input_ids[j, : len(x)] = x
                mask[j, : len(x)] = 1
            batch = {
                "input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(mask),
            }
            logits = np.asarray(loaded.run(batch)["logits"], dtype=np.float64)
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            for j, record in enumerate(records[start : start + batch_size]):
                n = len(record["tokens"])
                first = first_subtoken_labels(word_ids[start + j], list(range(n)))
                at = {w: p for p, w in enumerate(first) if w != IGNORE}  # word -> its position
                best = {w: int(probs[j, p].argmax()) for w, p in at.items()}
                rows.append(
                    {
                        "id": record["id"],
                        "tokens": record["tokens"],
                        "tags": [loaded.labels[best[w]] if w in at else None for w in range(n)],
                        "scores": [
                            round(float(probs[j, at[w], best[w]]), 6) if w in at else None
                            for w in range(n)
                        ],
                    }
                )
            progress.advance(counts={"inputs": len(chunk)})
    return rows
