"""Pixel batches for image tasks, built from the prepared uint8 pixels.

Train-split augmentations (data.augment) run here, on the fly, seeded by (train.seed,
epoch, example index) so every epoch sees new variants yet a resumed run sees exactly the
ones the uninterrupted run would have; then pixels are scaled to (x / 255 - mean) / std.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fine_tune_cli.data.image_steps import apply_steps, apply_steps_batch
from fine_tune_cli.data.steps import STEPS
from fine_tune_cli.data.store import PreparedSplit
from fine_tune_cli.errors import RecipeError

if TYPE_CHECKING:
    import torch


def recipe_patch_size(recipe: Any) -> int:
    """The ViT patch side the recipe trains with (its own, init_from's or the preset's)."""
    from fine_tune_cli.models.registry import resolve_init_dir
    from fine_tune_cli.models.vit import patch_size

    init_dir = resolve_init_dir(recipe.model.init_from) if recipe.model.init_from else None
    return patch_size(recipe.model, init_dir)


class ImageBatches:
    """Pixels of a batch: augmented on the fly (train split, once an epoch is set), scaled."""

    def __init__(self, recipe: Any, prepared: Any):
        info = prepared.manifest["images"]
        self.size: int = info["size"]
        self.channels: int = info["channels"]
        self.mean = np.asarray(info["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(info["std"], dtype=np.float32).reshape(-1, 1, 1)
        self.augment = [(STEPS.get(s.name), s.parsed_params()) for s in recipe.data.augment]
        self.seed = recipe.train.seed
        self.epoch: int | None = None  # set by the training loop; None: never augment
        if self.augment:
            probe = np.zeros((self.size, self.size, self.channels), dtype=np.uint8)
            shape = apply_steps(probe, self.augment, 0, 0).shape
            if shape != probe.shape:
                raise RecipeError(
                    f"data.augment: the steps turn {self.size}x{self.size}x{self.channels}"
                    f" images into {shape[0]}x{shape[1]}x{shape[2]}; augmentations must keep"
                    f" the size (e.g. random_crop with size {self.size} and some padding)"
                )

    def augmenting(self, split: PreparedSplit) -> bool:
        return bool(self.augment) and self.epoch is not None and split.name == "train"

    def raw(self, split: PreparedSplit, indices: np.ndarray) -> np.ndarray:
        """uint8 (B, C, H, W) pixels of the batch, augmented when training."""
        pixels = np.asarray(split.extra["pixels"][np.asarray(indices)])
        if not self.augmenting(split):
            return pixels
        seed = self.seed * 100_003 + int(self.epoch or 0)
        images = list(pixels.transpose(0, 2, 3, 1))  # (H, W, C) each, as the steps take them
        done = apply_steps_batch(images, self.augment, seed, [int(i) for i in indices])
        return np.stack(done).transpose(0, 3, 1, 2)

    def pixel_values(self, split: PreparedSplit, indices: np.ndarray) -> torch.Tensor:
        import torch

        scaled = (self.raw(split, indices).astype(np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))
