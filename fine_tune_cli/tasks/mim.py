"""SimMIM-style masked image modelling (ViT pretraining). Masks are drawn like the
augmentations: per (seed, epoch, example) in training, fixed per example for evaluation,
so validation losses are comparable across evals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fine_tune_cli.data.image_batches import ImageBatches, recipe_patch_size
from fine_tune_cli.errors import RecipeError
from fine_tune_cli.models.registry import FAMILIES
from fine_tune_cli.tasks.base import (
    Autocast,
    EvalResult,
    batches_in_eval_mode,
    no_grad,
    register_task,
)
from fine_tune_cli.tasks.modality import ImageTask

if TYPE_CHECKING:
    import torch

    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.recipe import Recipe

EVAL_MASK_KEY = 1_000_003  # stands in for the epoch when drawing evaluation masks


@register_task
class MaskedImageTask(ImageTask):
    """SimMIM: hide a share of each image's blocks; L1 loss on the hidden pixels."""

    name = "mim"
    recipe_task = "mim"
    # `ftc export` refuses it with this line (exit 2): there are no logits to serve.
    not_exportable = (
        "a masked-image-modelling run has no logits to export; fine-tune a classifier from it"
        " (model.init_from: this run) and export that"
    )

    def __init__(self, recipe: Recipe, prepared: Any):
        self.images = ImageBatches(recipe, prepared)
        patch = recipe_patch_size(recipe)
        block = recipe.mim.mask_patch_size or patch
        size = self.images.size
        if block % patch or size % block:
            raise RecipeError(
                f"mim.mask_patch_size: {block} must be a multiple of the patch size {patch} and"
                f" divide the image size {size}"
            )
        self.grid = size // block  # mask blocks per side
        self.repeat = block // patch  # patches per block side
        self.num_patches = (size // patch) ** 2
        blocks = self.grid * self.grid
        self.n_masked = round(recipe.mim.mask_ratio * blocks)
        # Hide at least one block and keep at least one visible.
        self.n_masked = min(max(self.n_masked, 1), max(blocks - 1, 1))
        self.seed = recipe.train.seed

    recipe_sections = ("mim",)

    @classmethod
    def modality_problems(cls, recipe: Recipe) -> list[str]:
        """The image rules, and mask_patch_size must tile the patches and the image."""
        model, block = recipe.model, recipe.mim.mask_patch_size
        patch = model.patch_size or (
            None
            if model.init_from
            else FAMILIES.get(model.family).presets[model.size].get("patch_size")
        )
        problems = super().modality_problems(recipe)
        if block and patch and block % patch:
            problems.append(
                f"mim.mask_patch_size: {block} is not a multiple of the patch size {patch}"
            )
        if block and model.image_size and model.image_size % block:
            problems.append(
                f"mim.mask_patch_size: image_size {model.image_size} is not divisible by {block}"
            )
        return problems

    @classmethod
    def from_recipe(cls, recipe: Recipe, prepared: Any) -> MaskedImageTask:
        return cls(recipe, prepared)

    def set_epoch(self, epoch: int) -> None:
        self.images.epoch = epoch

    def masks(self, indices: np.ndarray, key: int) -> torch.Tensor:
        """(B, num_patches) bool: exactly n_masked blocks per image, seeded per example."""
        import torch

        blocks = np.zeros((len(indices), self.grid * self.grid), dtype=bool)
        for row, index in zip(blocks, indices, strict=True):
            rng = np.random.default_rng([self.seed, key, int(index)])
            row[rng.choice(len(row), size=self.n_masked, replace=False)] = True
        grid = blocks.reshape(-1, self.grid, self.grid)
        grid = grid.repeat(self.repeat, axis=1).repeat(self.repeat, axis=2)
        return torch.from_numpy(grid.reshape(len(indices), -1))

    def collate(self, split: PreparedSplit, indices: np.ndarray) -> dict[str, torch.Tensor]:
        training = self.images.epoch is not None and split.name == "train"
        key = int(self.images.epoch) if training else EVAL_MASK_KEY
        return {
            "pixel_values": self.images.pixel_values(split, indices),
            "bool_masked_pos": self.masks(np.asarray(indices), key),
        }

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["pixel_values"].shape[0])

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return self.units(batch) * self.num_patches

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    @no_grad
    def evaluate(
        self,
        model: torch.nn.Module,
        split: PreparedSplit,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> EvalResult:
        import torch.nn.functional as F

        loss_sum, abs_sum, masked_values = 0.0, 0.0, 0.0
        for idx, batch in batches_in_eval_mode(self, model, split, batch_size, device):
            with autocast():
                out = model(**batch)
            pixels = batch["pixel_values"].float()
            side = pixels.shape[-1] // int(self.num_patches**0.5)  # pixels per patch side
            grid = int(self.num_patches**0.5)
            mask = batch["bool_masked_pos"].reshape(-1, grid, grid).float()
            mask = mask.repeat_interleave(side, 1).repeat_interleave(side, 2).unsqueeze(1)
            error = F.l1_loss(out.reconstruction.float(), pixels, reduction="none")
            abs_sum += float((error * mask).sum())
            masked_values += float(mask.sum()) * pixels.shape[1]
            loss_sum += float(out.loss) * len(idx)
        metrics = {
            "loss": loss_sum / len(split),
            "reconstruction_loss": abs_sum / max(masked_values, 1.0),
            "num_examples": len(split),
        }
        return EvalResult(metrics, {})
