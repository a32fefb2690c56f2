"""Image steps (same registry as the text steps) and on-the-fly augmentation: seeded per
(seed, epoch, index), train split only, never baked into the prepared data."""

from __future__ import annotations

import numpy as np
import pytest

from fine_tune_cli.data.image_steps import IMAGE_STEPS, apply_steps
from fine_tune_cli.data.steps import STEPS, StepContext, run_pipeline
from tests.vision.conftest import digits


def image(h: int = 8, w: int = 8, c: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def run(name: str, img: np.ndarray, seed: int = 0, index: int = 0, **params) -> np.ndarray:
    step = STEPS.get(name)
    return apply_steps(img, [(step, step.params(**params))], seed, index)


def test_image_steps_share_the_step_registry():
    assert set(STEPS.names()) >= IMAGE_STEPS
    expected = {"resize", "center_crop", "random_crop", "hflip", "rotate", "convert_channels"}
    assert expected | {"normalize"} <= IMAGE_STEPS


REQUIRED = {
    "resize": {"size": 4},
    "center_crop": {"size": 4},
    "random_crop": {"size": 6, "padding": 1},
    "convert_channels": {"mode": "rgb"},
}


def test_image_steps_return_new_records_and_leave_inputs_alone():
    original = [{"id": i, "image": image(), "label": "a", "group": None} for i in range(2)]
    snapshot = [{**r, "image": r["image"].copy()} for r in original]
    for name in sorted(IMAGE_STEPS):
        step = STEPS.get(name)
        assert step.doc and step.params.model_config.get("extra") == "forbid", name
        assert all(f.description for f in step.params.model_fields.values()), name
        out = step.fn(original, step.params(**REQUIRED.get(name, {})), StepContext(seed=1))
        assert all(o is not r for o in out for r in original), name
        for before, after in zip(snapshot, original, strict=True):
            assert np.array_equal(before["image"], after["image"]), name


def test_geometry_and_channel_steps():
    img = image(10, 6, 3)
    assert run("resize", img, size=4).shape == (4, 4, 3)
    assert run("resize", img, size=12, keep_aspect=True).shape == (20, 12, 3)
    assert run("center_crop", img, size=4).shape == (4, 4, 3)
    assert run("center_crop", image(2, 2), size=4)[0, 0, 0] == 0  # zero-padded
    assert run("random_crop", img, size=6, padding=1).shape == (6, 6, 3)
    assert run("convert_channels", img, mode="grey").shape == (10, 6, 1)
    assert run("convert_channels", image(), mode="rgb").shape == (8, 8, 3)
    flipped = run("hflip", img, p=1.0)
    assert np.array_equal(flipped, img[:, ::-1])
    assert run("rotate", img, degrees=10).shape == img.shape


@pytest.mark.parametrize("name", ["random_crop", "rotate", "hflip"])
def test_random_steps_are_deterministic_per_seed_and_index(name: str):
    params = {"random_crop": {"size": 8, "padding": 2}, "rotate": {"degrees": 30}}.get(name, {})
    imgs = [digits(40)[0][i][:, :, None] for i in range(40)]
    a = [run(name, x, seed=1, index=i, **params) for i, x in enumerate(imgs)]
    b = [run(name, x, seed=1, index=i, **params) for i, x in enumerate(imgs)]
    c = [run(name, x, seed=2, index=i, **params) for i, x in enumerate(imgs)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("shape", [(8, 8, 1), (12, 10, 3), (9, 16, 1)])
def test_rotate_gives_the_pixels_pillow_gives(shape: tuple[int, int, int]):
    """The batched numpy rotation is Pillow's BILINEAR rotate pixel for pixel (square and
    not, grey and RGB, both directions, up to the 45 degree limit), so moving it out of
    Pillow changed no augmented image."""
    from PIL import Image

    from fine_tune_cli.data.image_steps import rotate_bilinear

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(40, *shape), dtype=np.uint8)
    images[:20] = np.where(images[:20] > 128, 255, 0)  # hard edges, like digits' strokes
    angles = list(rng.uniform(-45, 45, size=40))
    ours = rotate_bilinear(images, angles)
    for image_, angle, got in zip(images, angles, ours, strict=True):
        pil = Image.fromarray(image_[:, :, 0] if shape[2] == 1 else image_)
        want = np.asarray(pil.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0))
        assert np.array_equal(got, want.reshape(shape)), angle


def test_a_batch_of_mixed_sizes_augments_like_one_at_a_time():
    from fine_tune_cli.data.image_steps import apply_steps_batch

    step = STEPS.get("rotate")
    steps = [(step, step.params(degrees=20))]
    images = [image(8, 8), image(8, 8), image(6, 9), image(8, 8)]
    together = apply_steps_batch(images, steps, 5, [10, 11, 12, 13])
    alone = [apply_steps(im, steps, 5, i) for i, im in zip([10, 11, 12, 13], images, strict=True)]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone, strict=True))


def test_record_level_steps_ignore_the_other_records():
    """A record's result depends on the seed and its id only (as for text augmentation)."""
    step = STEPS.get("rotate")
    records = [{"id": i, "image": image(), "label": "a"} for i in range(5)]
    params = step.params(degrees=20)
    full, report = run_pipeline(records, [(step, params)], StepContext(seed=3))
    part, _ = run_pipeline(records[2:], [(step, params)], StepContext(seed=3))
    assert np.array_equal(full[3]["image"], part[1]["image"])
    assert report == [{"step": "rotate", "in": 5, "out": 5}]


def test_normalize_needs_both_or_neither():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="give both or neither"):
        STEPS.get("normalize").params(mean=[0.5])
    with pytest.raises(ValidationError, match="must be > 0"):
        STEPS.get("normalize").params(mean=[0.5], std=[0.0])


def _task(ftc, *overrides: str):
    """The training task of vit-digits (prepared through the CLI) and its train split."""
    from fine_tune_cli.data.prepare import prepare_dataset
    from fine_tune_cli.recipe import load_recipe
    from fine_tune_cli.tasks import build_task

    args = ["vit-digits", "data.source.limit=200", *overrides]
    assert ftc("prepare", *args).code == 0
    recipe = load_recipe(args[0], args[1:]).recipe
    prepared, cached = prepare_dataset(recipe)
    assert cached
    return build_task(recipe, prepared), prepared


AUGMENT = "data.augment=[{random_crop: {size: 8, padding: 1}}, {rotate: {degrees: 10}}]"


def test_augmentation_on_the_fly_per_seed_epoch_and_index(ftc):
    task, prepared = _task(ftc, AUGMENT)
    train, valid = prepared.splits["train"], prepared.splits["validation"]
    idx = np.arange(16)
    stored = np.asarray(train.extra["pixels"][idx])
    plain = task.collate(train, idx)["pixel_values"]
    # not baked in: the prepared pixels are the originals, and without an epoch (eval,
    # export) batches are not augmented
    assert np.array_equal(task.images.raw(train, idx), stored)
    task.set_epoch(0)
    e0 = task.collate(train, idx)["pixel_values"]
    assert not torch_equal(e0, plain)
    assert torch_equal(e0, task.collate(train, idx)["pixel_values"])  # same epoch: same
    # the same example gets the same variant whatever batch it lands in
    assert torch_equal(task.collate(train, idx[::-1])["pixel_values"][-1], e0[0])
    task.set_epoch(1)
    assert not torch_equal(task.collate(train, idx)["pixel_values"], e0)  # new epoch: new
    # validation is never augmented: its batches are the stored pixels, scaled
    vidx = np.arange(8)
    raw = np.asarray(valid.extra["pixels"][vidx], dtype=np.float32)
    expected = (raw / 255 - task.images.mean) / task.images.std
    assert np.allclose(task.collate(valid, vidx)["pixel_values"].numpy(), expected, atol=1e-6)
    other, _ = _task(ftc, AUGMENT, "train.seed=7")
    other.set_epoch(0)
    assert not torch_equal(other.collate(train, idx)["pixel_values"], e0)  # seed matters


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_augmentations_must_keep_the_image_size(ftc):
    result = ftc(
        "train", "vit-digits", "data.source.limit=100", "data.augment=[{random_crop: {size: 6}}]",
        "--json",
    )  # fmt: skip
    assert result.code == 2
    assert "data.augment: the steps turn 8x8x1 images into 6x6x1" in result.json()["message"]
