"""Encoding image data: split records -> uint8 pixel arrays (N, C, H, W) per split, the
normalisation statistics and an HF image processor config (preprocessor_config.json) that
reproduces the preprocessing for a saved or exported model.

Pixels stay uint8 in the prepared dir (memory-mapped at training time); scaling to
(x / 255 - mean) / std and the train-split augmentations happen as batches are built.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fine_tune_cli.data.prepare import SPLITS
from fine_tune_cli.data.steps import Record
from fine_tune_cli.data.store import PreparedSplit, write_split
from fine_tune_cli.errors import DataError, RecipeError
from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")

PROCESSOR_DIR = "processor"

# Prepared data decoded from image files changed for the same inputs: revision 2 applies
# EXIF orientation and carves validation out of train/ when split_folders has no
# validation/ folder. It enters the hash of file sources only, so stale entries are not
# reused and prepared digits/npz data keeps its hash.
IMAGE_FILE_FORMATS = ("imagefolder", "image_manifest")
IMAGE_FILES_REVISION = 2


def _init_dir(recipe: Recipe) -> Path | None:
    from fine_tune_cli.models.registry import resolve_init_dir

    return resolve_init_dir(recipe.model.init_from) if recipe.model.init_from else None


def target_size(recipe: Recipe) -> int | None:
    from fine_tune_cli.models.vit import target_image_size

    return target_image_size(recipe.model, _init_dir(recipe))


def image_hash_inputs(recipe: Recipe, format_version: int) -> dict[str, Any]:
    """What determines prepared image data: the source's content (every file), the
    pipeline, split and the image size the model wants. Paths do not count."""
    from fine_tune_cli.data.image_sources import image_format, source_fingerprint
    from fine_tune_cli.data.prepare import hashed_data

    inputs = {
        "format": format_version,
        "source_sha256": source_fingerprint(recipe.data.source),
        "data": hashed_data(recipe),
        "family": recipe.model.family,
        "task": recipe.model.task,
        "image_size": target_size(recipe),
    }
    if image_format(recipe.data.source) in IMAGE_FILE_FORMATS:
        inputs["files_revision"] = IMAGE_FILES_REVISION
    return inputs


def fit_image(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """An (H, W, C) uint8 image with `channels` channels, resized (bilinear) to size x size."""
    from PIL import Image

    if image.shape[2] != channels:
        image = np.repeat(image, 3, axis=2)  # grey -> RGB; RGB -> grey is a recipe step
    if image.shape[:2] != (size, size):
        im = Image.fromarray(image[:, :, 0] if channels == 1 else image)
        image = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
        image = image[:, :, None] if image.ndim == 2 else image
    return image


def _geometry(recipe: Recipe, records: list[Record]) -> tuple[int, int]:
    """(side, channels) of the prepared images: the model's image size (else the data's
    single size) and 3 channels if any image is RGB, else 1."""
    shown = recipe.data.source.path or recipe.data.source.format
    channels_seen = Counter(r["image"].shape[2] for r in records)
    channels = 3 if 3 in channels_seen else 1
    if len(channels_seen) > 1:
        log.info(
            "%d grey images converted to RGB to match the rest (a convert_channels step"
            " chooses otherwise)",
            channels_seen[1],
        )
    size = target_size(recipe)
    if size is None:
        shapes = Counter(r["image"].shape[:2] for r in records)
        if len(shapes) > 1:
            (a, _), (b, _) = shapes.most_common(2)
            odd = next(r for r in records if r["image"].shape[:2] == b)
            raise DataError(
                f"{shown}: images have different sizes ({a[0]}x{a[1]} and {b[0]}x{b[1]}, e.g."
                f" {odd['source']}); set model.image_size or add a resize step"
            )
        (h, w), _ = shapes.most_common(1)[0]
        if h != w:
            raise DataError(
                f"{shown}: images are {h}x{w}; vit needs square images: set model.image_size"
                " or add a center_crop step"
            )
        size = h
    return size, channels


def _normalization(
    recipe: Recipe, train: np.ndarray, channels: int
) -> tuple[list[float], list[float], bool]:
    """(mean, std, on): the normalize step's values (broadcast from one value), or the
    train split's per-channel statistics of x / 255; (0, 1, False) without the step."""
    steps = recipe.data.steps
    if not steps or steps[-1].name != "normalize":
        return [0.0] * channels, [1.0] * channels, False
    params = steps[-1].parsed_params()
    where = f"data.steps[{len(steps) - 1}]"
    if params.mean is not None:
        mean, std = list(params.mean), list(params.std)
        if len(mean) not in (1, channels):
            raise RecipeError(
                f"{where}: normalize has {len(mean)} mean/std values for {channels}-channel"
                " images (give 1 or one per channel)"
            )
        return mean * (channels // len(mean)), std * (channels // len(std)), True
    scaled = train.astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = scaled.std(axis=(0, 2, 3))
    std[std < 1e-6] = 1.0  # a constant channel: nothing to scale
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std], True


def image_processor(size: int, mean: list[float], std: list[float], normalize: bool) -> Any:
    """An HF image processor doing what batches get: resize, x / 255, (x - mean) / std."""
    import transformers

    # transformers 5 splits the PIL backend out (the default one needs torchvision).
    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(
        do_resize=True,
        size={"height": size, "width": size},
        resample=2,  # PIL bilinear, as prepare resizes
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=normalize,
        image_mean=mean,
        image_std=std,
    )


def encode_images(
    recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
) -> dict[str, Any]:
    """uint8 pixels (N, C, S, S) per split + label ids + each image's source for reports."""
    records = [r for name in SPLITS for r in splits[name]]
    size, channels = _geometry(recipe, records)
    label_index = {name: i for i, name in enumerate(labels)}
    pixels = {}
    resized = 0
    for name in SPLITS:
        array = np.zeros((len(splits[name]), channels, size, size), dtype=np.uint8)
        for j, r in enumerate(splits[name]):
            resized += r["image"].shape[:2] != (size, size)
            array[j] = fit_image(r["image"], size, channels).transpose(2, 0, 1)
        pixels[name] = array
    if resized:
        log.info("resized %d images to %dx%d (model.image_size)", resized, size, size)
    mean, std, normalize = _normalization(recipe, pixels["train"], channels)
    split_info = {}
    for name in SPLITS:
        rows = splits[name]
        y = [label_index[r["label"]] for r in rows] if labels else None
        split_info[name] = write_split(
            out,
            name,
            [[] for _ in rows],  # no tokens: the example is its pixels
            y,
            [r["source"] for r in rows],
            extra={"pixels": pixels[name]},
        )
        split_info[name]["images"] = len(rows)
        if labels:
            counts = Counter(r["label"] for r in rows)
            split_info[name]["label_counts"] = {k: counts.get(k, 0) for k in labels}
    image_processor(size, mean, std, normalize).save_pretrained(str(out / PROCESSOR_DIR))
    images = {
        "size": size,
        "channels": channels,
        "mean": mean,
        "std": std,
        "normalize": normalize,
        "resized": int(resized),
    }
    log.info(
        "images: %dx%d, %d channel(s); normalisation mean %s std %s",
        size,
        size,
        channels,
        mean,
        std,
    )
    return {"splits": split_info, "images": images}


def image_split_from_source(
    recipe: Recipe, prepared: Any, path: Path
) -> tuple[PreparedSplit, list[str]]:
    """`ftc eval --data PATH`: an image folder, manifest or npz through the run's pipeline,
    at the prepared data's size, channels and label ids."""
    from fine_tune_cli.data.prepare import labelled_records_from

    fmt = "auto" if recipe.data.source.format == "digits" else recipe.data.source.format
    records, labels = labelled_records_from(
        recipe, path, prepared.label_names, format=fmt, split_folders=False
    )
    info = prepared.manifest["images"]
    if info["channels"] == 1 and any(r["image"].shape[2] == 3 for r in records):
        raise DataError(
            f"{path}: RGB images for a model trained on grey ones; add a convert_channels step"
        )
    pixels = np.stack(
        [fit_image(r["image"], info["size"], info["channels"]).transpose(2, 0, 1) for r in records]
    )
    split = PreparedSplit(
        name=path.stem,
        input_ids=np.zeros(0, dtype=np.int32),
        offsets=np.zeros(len(records) + 1, dtype=np.int64),
        labels=labels,
        extra={"pixels": pixels},
    )
    return split, [r["source"] for r in records]


def sample_geometry(recipe: Recipe, records: list[Record]) -> tuple[int, int]:
    """(side, channels) that prepare would give a sample of the source (for dry runs)."""
    from fine_tune_cli.data.steps import STEPS, StepContext, run_pipeline

    steps = [(STEPS.get(s.name), s.parsed_params()) for s in recipe.data.steps]
    records, _ = run_pipeline(records, steps, StepContext(seed=recipe.data.split.seed))
    return _geometry(recipe, records)
