"""Tasks: what differs between objectives (batch, loss, evaluation), passed into the one
training loop as an argument instead of subclassing the loop."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fine_tune_cli.data.batching import eval_batches, pad_batch
from fine_tune_cli.data.store import PreparedSplit
from fine_tune_cli.registry import Registry


def batches_in_eval_mode(
    task: Any, model: torch.nn.Module, split: PreparedSplit, batch_size: int, device: Any
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(indices, batch on the device) for every eval batch of `split`, with the model in
    eval mode meanwhile: every task's evaluate walks the split this way."""
    was_training = model.training
    model.eval()
    try:
        for idx in eval_batches(split, batch_size):
            yield idx, to_device(task.collate(split, idx), device)
    finally:
        model.train(was_training)


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # full metrics (per-class etc.); flat scalars via flat_metrics
    details: dict[str, Any] = field(default_factory=dict)  # e.g. probs/labels for reports


class ClassificationTask:
    """Sequence classification: cross-entropy (optionally class-weighted), sklearn metrics."""

    unit = "samples"

    def __init__(self, pad_id: int, label_names: list[str], class_weights: list[float] | None):
        self.pad_id = pad_id
        self.label_names = label_names
        self.class_weights = torch.tensor(class_weights) if class_weights else None

    @classmethod
    def from_recipe(cls, recipe: Any, prepared: Any) -> ClassificationTask:
        return cls(
            pad_id=prepared.tokenizer.pad_token_id,
            label_names=prepared.label_names,
            class_weights=prepared.manifest.get("class_weights"),
        )

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
        logits = self.logits(model, batch).float()
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return F.cross_entropy(logits, batch["labels"], weight=weight)

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, split: PreparedSplit, batch_size: int, device, autocast
    ) -> EvalResult:
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


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    # Pinned host memory lets the copy overlap with compute (non_blocking).
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


TASKS: Registry[type] = Registry("task")
TASKS.add("classification", ClassificationTask)

# Language-model and image tasks register themselves on import (they build on the helpers
# above); image tasks are keyed "image/<task>" (build_task picks them for image data).
from fine_tune_cli.engine import image_tasks, lm_tasks  # noqa: E402, F401
