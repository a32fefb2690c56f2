"""ViT: image classification and SimMIM-style masked image modelling on the same presets.

Image side, channel count and labels come from the prepared data (BuildContext); the
patch size from the recipe (model.patch_size) or the preset. A model started from
`init_from` keeps that model's geometry, and a recipe or data that disagrees with it is an
error instead of silently re-initialised position embeddings.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fine_tune_cli.errors import RecipeError
from fine_tune_cli.models.registry import (
    BuildContext,
    Family,
    label_kwargs,
    load_pretrained,
    preset_config,
    register_family,
    register_model,
)

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from fine_tune_cli.recipe import ModelSpec

register_family(
    Family(
        name="vit",
        presets={
            # tiny is what the tests use (and what learns the 8x8 digits in seconds).
            "tiny": {
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "intermediate_size": 128,
                "patch_size": 4,
            },
            "mini": {
                "hidden_size": 128,
                "num_layers": 4,
                "num_heads": 4,
                "intermediate_size": 512,
                "patch_size": 4,
            },
            "small": {
                "hidden_size": 384,
                "num_layers": 12,
                "num_heads": 6,
                "intermediate_size": 1536,
                "patch_size": 16,
            },
            "base": {
                "hidden_size": 768,
                "num_layers": 12,
                "num_heads": 12,
                "intermediate_size": 3072,
                "patch_size": 16,
            },
        },
        tokenizer_kind=None,  # an image family: the data is encoded by an image processor
        modality="image",
        head_modules=("classifier", "decoder"),
    )
)


def init_config(init_dir: Path | None) -> dict[str, Any]:
    return json.loads((init_dir / "config.json").read_text()) if init_dir else {}


def patch_size(spec: ModelSpec, init_dir: Path | None = None) -> int:
    """The recipe's patch size, else the init_from model's, else the preset's."""
    if spec.patch_size:
        return spec.patch_size
    if init_dir is not None:
        return int(init_config(init_dir)["patch_size"])
    return int(preset_config(spec)["patch_size"])


def target_image_size(spec: ModelSpec, init_dir: Path | None) -> int | None:
    """The side prepared images are resized to: the recipe's, else the init_from model's,
    else None (keep the data's own size)."""
    if spec.image_size:
        return spec.image_size
    if init_dir is not None:
        return int(init_config(init_dir)["image_size"])
    return None


def _check_geometry(spec: ModelSpec, ctx: BuildContext, patch: int) -> None:
    if ctx.image_size is None or ctx.num_channels is None:
        raise ValueError("vit needs BuildContext.image_size and num_channels")  # a bug
    if ctx.image_size % patch:
        raise RecipeError(
            f"model.patch_size: the images are {ctx.image_size}x{ctx.image_size}, not divisible"
            f" by the patch size {patch} (set model.image_size or model.patch_size)"
        )
    if ctx.init_dir is None:
        return
    config = init_config(ctx.init_dir)
    for key, want in (
        ("image_size", ctx.image_size),
        ("patch_size", patch),
        ("num_channels", ctx.num_channels),
    ):
        if int(config.get(key, want)) != want:
            raise RecipeError(
                f"model.init_from: {ctx.init_dir} has {key} {config[key]} but this recipe's"
                f" data/model has {want} (keep the data and model.{key} of the source model,"
                " or add a convert_channels step)"
                if key != "patch_size"
                else f"model.patch_size: {want} differs from init_from's {config[key]}"
                " (remove model.patch_size to keep it)"
            )


def vit_config(spec: ModelSpec, ctx: BuildContext, **extra: object):
    from transformers import ViTConfig

    values = preset_config(spec)
    patch = patch_size(spec)
    _check_geometry(spec, ctx, patch)
    dropout = values.get("dropout", 0.0)
    return ViTConfig(
        hidden_size=values["hidden_size"],
        num_hidden_layers=values["num_layers"],
        num_attention_heads=values["num_heads"],
        intermediate_size=values["intermediate_size"],
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        image_size=ctx.image_size,
        patch_size=patch,
        num_channels=ctx.num_channels,
        encoder_stride=patch,  # SimMIM's decoder upsamples by the patch size
        **extra,
    )


@register_model("vit", "classification", auto_class="AutoModelForImageClassification")
def build_classifier(spec: ModelSpec, ctx: BuildContext) -> nn.Module:
    from transformers import ViTForImageClassification

    if ctx.init_dir is not None:
        _check_geometry(spec, ctx, patch_size(spec, ctx.init_dir))
        return load_pretrained(ViTForImageClassification, ctx, **label_kwargs(ctx))
    return ViTForImageClassification(vit_config(spec, ctx, **label_kwargs(ctx)))


@register_model("vit", "mim", auto_class="AutoModelForMaskedImageModeling")
def build_mim(spec: ModelSpec, ctx: BuildContext) -> nn.Module:
    from transformers import ViTForMaskedImageModeling

    if ctx.init_dir is not None:
        patch = patch_size(spec, ctx.init_dir)
        _check_geometry(spec, ctx, patch)
        return load_pretrained(ViTForMaskedImageModeling, ctx, encoder_stride=patch)
    return ViTForMaskedImageModeling(vit_config(spec, ctx))
