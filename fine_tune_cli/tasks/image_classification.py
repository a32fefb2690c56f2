"""Image classification (ViT): the text task's loss and metrics on pixel batches, with
on-the-fly train augmentations seeded per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fine_tune_cli.data.image_batches import ImageBatches, recipe_patch_size
from fine_tune_cli.tasks.base import Autocast, EvalResult, Modality, Predictions, register_task
from fine_tune_cli.tasks.classification import ClassificationTask, count_labels, label_rows
from fine_tune_cli.tasks.modality import ImageTask

if TYPE_CHECKING:
    import torch

    from fine_tune_cli.data.steps import Record
    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.recipe import Recipe


@register_task
class ImageClassificationTask(ImageTask, ClassificationTask):
    """ViT classification: cross-entropy and sklearn metrics, pixels instead of tokens."""

    name = "image_classification"
    recipe_task = "classification"
    modality: ClassVar[Modality] = "image"

    def __init__(self, recipe: Recipe, prepared: Any):
        ClassificationTask.__init__(
            self,
            pad_id=0,
            label_names=prepared.label_names,
            class_weights=prepared.manifest.get("class_weights"),
        )
        self.images = ImageBatches(recipe, prepared)
        self.patches = (self.images.size // recipe_patch_size(recipe)) ** 2

    @classmethod
    def label_names(cls, recipe: Recipe, records: list[Record]) -> list[str]:
        return count_labels(recipe, records)

    @classmethod
    def split_from_file(cls, recipe: Recipe, prepared: Any, path: Path) -> tuple[Any, list[str]]:
        from fine_tune_cli.data.images import image_split_from_source

        return image_split_from_source(recipe, prepared, path)

    @classmethod
    def predict(cls, loaded: Any, source: str) -> Predictions:
        from fine_tune_cli.predict import image_inputs, predict_image_probs

        records = image_inputs(source, loaded.recipe)
        return label_rows(records, predict_image_probs(loaded, records), loaded)

    @classmethod
    def explainer(cls, target: Any) -> Any:
        from fine_tune_cli.tasks.explainers import ImageExplainer

        return ImageExplainer.for_target(target)

    @classmethod
    def baseline(
        cls, recipe: Recipe, prepared: Any, split: PreparedSplit, texts: list[str]
    ) -> dict[str, Any]:
        """Logistic regression on the train split's stored pixels (before normalize and
        augmentation), block-averaged to at most 32x32."""
        from fine_tune_cli.evaluation.baseline import fit_and_score, pixel_features, pixel_model

        train = prepared.splits["train"]
        return fit_and_score(
            pixel_model(),
            "logistic_regression_on_pixels",
            pixel_features(train.extra["pixels"]),
            train.labels,
            pixel_features(split.extra["pixels"]),
            split.labels,
            recipe.data.split.seed,
        )

    @classmethod
    def from_recipe(cls, recipe: Recipe, prepared: Any) -> ImageClassificationTask:
        return cls(recipe, prepared)

    def set_epoch(self, epoch: int) -> None:
        self.images.epoch = epoch

    def collate(self, split: PreparedSplit, indices: np.ndarray) -> dict[str, torch.Tensor]:
        import torch

        batch = {"pixel_values": self.images.pixel_values(split, indices)}
        if split.labels is not None:
            batch["labels"] = torch.from_numpy(
                np.asarray(split.labels[np.asarray(indices)], dtype=np.int64)
            )
        return batch

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["pixel_values"].shape[0])

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return self.units(batch) * self.patches  # patch tokens seen by the encoder

    def logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(pixel_values=batch["pixel_values"]).logits

    def evaluate(
        self,
        model: torch.nn.Module,
        split: PreparedSplit,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> EvalResult:
        result = super().evaluate(model, split, batch_size, device, autocast)
        result.details["pixels"] = split.extra["pixels"]  # for the misclassified grid
        return result
