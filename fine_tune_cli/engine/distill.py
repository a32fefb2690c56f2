"""Knowledge distillation: a student trained on a teacher's softened outputs plus the
true labels (Hinton et al.): loss = (1 - alpha) * CE(y) + alpha * T^2 * KL(teacher || student).

It wraps the student's task, so the training loop stays the same loop."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from fine_tune_cli.errors import RecipeError

if TYPE_CHECKING:
    import numpy as np

    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.tasks.base import Autocast, EvalResult
    from fine_tune_cli.tasks.classification import ClassificationTask

log = logging.getLogger("ftc")


class DistillationTask:
    """The student's task with the distillation loss; everything else is the student's."""

    def __init__(
        self, base: ClassificationTask, teacher: torch.nn.Module, temperature: float, alpha: float
    ):
        self.base = base
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.unit = base.unit
        self.primary_metric = base.primary_metric
        self.not_exportable = base.not_exportable
        self.generates_samples = base.generates_samples
        self.pads_batches = base.pads_batches

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def collate(self, split: PreparedSplit, indices: np.ndarray) -> dict[str, torch.Tensor]:
        return self.base.collate(split, indices)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return self.base.units(batch)

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return self.base.tokens(batch)

    def evaluate(
        self,
        model: torch.nn.Module,
        split: PreparedSplit,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> EvalResult:
        return self.base.evaluate(model, split, batch_size, device, autocast)

    def samples(
        self, model: torch.nn.Module, split: PreparedSplit, device: torch.device
    ) -> list[dict[str, Any]]:
        return self.base.samples(model, split, device)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hard = self.base.loss(model, batch)
        student = self.base.logits(model, batch).float()
        with torch.no_grad():
            teacher = self.base.logits(self.teacher, batch).float()
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(student / t, dim=-1),
            F.softmax(teacher / t, dim=-1),
            reduction="batchmean",
        ) * (t * t)
        return (1 - self.alpha) * hard + self.alpha * soft


def load_teacher(recipe: Any, prepared: Any, device: torch.device) -> torch.nn.Module:
    """The teacher model, frozen; it must share the student's tokenizer and labels."""
    from fine_tune_cli.data.tokenizers import fingerprint_dir
    from fine_tune_cli.targets import load_model, resolve_target

    target = resolve_target(recipe.train.distill.teacher)
    if fingerprint_dir(target.model_dir) != fingerprint_dir(prepared.path / "tokenizer"):
        raise RecipeError(
            f"train.distill.teacher: {target.model_dir} uses another tokenizer than this recipe;"
            f" set data.tokenizer.kind=pretrained data.tokenizer.path={target.model_dir}"
        )
    teacher = load_model(target)
    names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if names != list(prepared.label_names):
        raise RecipeError(
            f"train.distill.teacher: its labels {names} differ from this data's"
            f" {prepared.label_names}"
        )
    for param in teacher.parameters():
        param.requires_grad_(False)
    n = sum(p.numel() for p in teacher.parameters())
    log.info("distilling from %s (%.2fM parameters)", target.model_dir, n / 1e6)
    return teacher.to(device).eval()
