"""Sequence classification (text): one token sequence per example, cross-entropy
(optionally class-weighted), scikit-learn metrics."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fine_tune_cli.data.batching import pad_batch
from fine_tune_cli.errors import DataError
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
    from fine_tune_cli.data.stream import StreamEncoding
    from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")


def count_labels(recipe: Recipe, records: list[Record]) -> list[str]:
    """The sorted label set of the source; fewer than two labels cannot be learned."""
    counts = Counter(r["label"] for r in records)
    if len(counts) < 2:
        only = next(iter(counts), None)
        raise DataError(
            f"{recipe.data.source.path}: column '{recipe.data.source.label}' has only one"
            f" label ({only!r}); classification needs at least two"
        )
    return sorted(counts)


def label_rows(records: list[Record], probs: np.ndarray, loaded: Any) -> Predictions:
    """One `{id, label, score, probs}` row per input and the count of each label."""
    from fine_tune_cli.predict import prediction_rows

    rows = prediction_rows(records, probs, loaded.labels)
    counts = Counter(row["label"] for row in rows)
    return Predictions(rows, {label: counts.get(label, 0) for label in loaded.labels})


@register_task
class ClassificationTask(TextTask):
    """Text classification; the image task reuses its loss and metrics on pixels."""

    name = "classification"
    recipe_task = "classification"
    needs_labels = True
    primary_metric = "accuracy"  # gated by export parity
    predictable = True
    explainable = True
    evaluates_new_files = True
    distillable = True

    def __init__(self, pad_id: int, label_names: list[str], class_weights: list[float] | None):
        import torch

        self.pad_id = pad_id
        self.label_names = label_names
        self.class_weights = torch.tensor(class_weights) if class_weights else None

    # ---- before data ---------------------------------------------------------------
    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        if not recipe.data.source.label:
            return ["data.source.label: classification needs a label column"]
        return []

    @classmethod
    def label_names(cls, recipe: Recipe, records: list[Record]) -> list[str]:
        return count_labels(recipe, records)

    @classmethod
    def stratify_labels(cls, records: list[Record]) -> list[Any] | None:
        return [r["label"] for r in records]

    @classmethod
    def stream_encoding(cls, recipe: Recipe) -> StreamEncoding | None:
        """One truncated [CLS] ... [SEP] sequence per example, its label and text."""
        from fine_tune_cli.data.stream import StreamEncoding

        return StreamEncoding(
            special_tokens=True, truncate=True, labels=True, texts=True, stratify=True
        )

    @classmethod
    def encode(
        cls, recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
    ) -> dict[str, Any]:
        from fine_tune_cli.data.prepare import encode_classification

        return encode_classification(recipe, splits, labels, out)

    @classmethod
    def split_from_file(cls, recipe: Recipe, prepared: Any, path: Path) -> tuple[Any, list[str]]:
        from fine_tune_cli.data.prepare import text_split_from_file

        return text_split_from_file(recipe, prepared, path)

    @classmethod
    def predict(cls, loaded: Any, source: str) -> Predictions:
        from fine_tune_cli.predict import STDIN, clean, predict_probs, read_inputs

        if source != STDIN and Path(source).is_dir():
            raise DataError(f"{source}: a folder; a text model reads a csv/jsonl/txt file or -")
        records = clean(read_inputs(source, loaded.recipe), loaded.recipe)
        return label_rows(records, predict_probs(loaded, [r["text"] for r in records]), loaded)

    @classmethod
    def explainer(cls, target: Any) -> Any:
        from fine_tune_cli.tasks.explainers import TextExplainer

        return TextExplainer.for_target(target)

    @classmethod
    def baseline(
        cls, recipe: Recipe, prepared: Any, split: PreparedSplit, texts: list[str]
    ) -> dict[str, Any]:
        """TF-IDF (word 1-2 grams) + logistic regression on the pipeline-cleaned train
        texts the prepared store keeps beside the ids (what the model trained on)."""
        from fine_tune_cli.evaluation.baseline import fit_and_score, text_model

        train = prepared.splits["train"]
        train_texts = train.texts(prepared.path)
        if len(train_texts) != len(train) or len(texts) != len(split):
            log.warning("baseline skipped: the prepared data keeps no texts (prepare again)")
            return {}
        return fit_and_score(
            text_model(),
            "tfidf_1-2gram+logistic_regression",
            train_texts,
            train.labels,
            texts,
            split.labels,
            recipe.data.split.seed,
        )

    @classmethod
    def from_recipe(cls, recipe: Recipe, prepared: Any) -> ClassificationTask:
        return cls(
            pad_id=prepared.tokenizer.pad_token_id,
            label_names=prepared.label_names,
            class_weights=prepared.manifest.get("class_weights"),
        )

    # ---- one run -------------------------------------------------------------------
    def collate(self, split: PreparedSplit, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return pad_batch(split, indices, self.pad_id)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0])

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of the micro-batch (the loop re-weights for accumulation)."""
        import torch.nn.functional as F

        logits = self.logits(model, batch).float()
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return F.cross_entropy(logits, batch["labels"], weight=weight)

    @no_grad
    def evaluate(
        self,
        model: torch.nn.Module,
        split: PreparedSplit,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> EvalResult:
        import torch
        import torch.nn.functional as F

        from fine_tune_cli.evaluation.metrics import classification_metrics

        probs, order, loss_sum = [], [], 0.0
        for idx, batch in batches_in_eval_mode(self, model, split, batch_size, device):
            with autocast():
                logits = self.logits(model, batch).float()
            loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
            order.append(idx)
        index = np.concatenate(order)
        p = np.empty((len(split), len(self.label_names)), dtype=np.float64)
        p[index] = np.concatenate(probs)
        y = np.asarray(split.labels, dtype=np.int64)
        metrics = classification_metrics(y, p, self.label_names, loss=loss_sum / len(split))
        return EvalResult(metrics, {"probs": p, "labels": y})
