"""Image pipeline steps, in the same registry as the text steps (`data.steps`,
`data.augment`).

An image record holds `image`: a uint8 array of shape (height, width, channels) with 1
(grey) or 3 (RGB) channels. Every step works record by record, drawing its randomness
from a generator seeded by the context seed, the record id and the step name, so a step
gives the same result for the same record whatever else is in the list. That is what
lets `data.augment` run on the fly at batch time (seed = train seed and epoch, id = the
example's index) and still resume exactly.

`normalize` is special: it must be the last of `data.steps`; the prepared data keeps
uint8 pixels and the scaling (x / 255 - mean) / std is applied as batches are built, with
mean/std from the recipe or computed on the train split (also written to the exported
preprocessor_config.json, so `predict` normalises the same way).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fine_tune_cli.data.steps import Record, Step, StepContext, run_pipeline, step

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# Names of the image steps (recipes for image families may only use these, and text
# recipes none of them); random ones draw a new variant per record (and per epoch).
IMAGE_STEPS: set[str] = set()
RANDOM_STEPS = {"random_crop", "hflip", "rotate"}


def image_step(name: str, params: type[BaseModel]) -> Callable[[Any], Any]:
    def decorate(fn: Any) -> Any:
        IMAGE_STEPS.add(name)
        return step(name, params)(fn)

    return decorate


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _to_pil(image: np.ndarray) -> Image.Image:
    from PIL import Image

    # A 2-D uint8 array becomes mode L, an (H, W, 3) one mode RGB.
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)


def _from_pil(im: Image.Image) -> np.ndarray:
    import numpy as np

    array = np.asarray(im, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _rng(ctx: StepContext, record: Record, name: str) -> random.Random:
    # String seeds hash with SHA-512: stable across processes (unlike hash()).
    return random.Random(f"{ctx.seed}:{record['id']}:{name}")


def _map(
    records: list[Record], fn: Callable[[np.ndarray, random.Random], np.ndarray], ctx, name: str
) -> list[Record]:
    return [{**r, "image": fn(r["image"], _rng(ctx, r, name))} for r in records]


def _pad(image: np.ndarray, padding: int) -> np.ndarray:
    import numpy as np

    if padding <= 0:
        return image
    return np.pad(image, ((padding, padding), (padding, padding), (0, 0)))


def _crop(image: np.ndarray, size: int, top: int, left: int) -> np.ndarray:
    return image[top : top + size, left : left + size]


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an image smaller than `size` (centred), like torchvision's crops do."""
    import numpy as np

    h, w = image.shape[:2]
    if h >= size and w >= size:
        return image
    dh, dw = max(0, size - h), max(0, size - w)
    return np.pad(image, ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)))


# --------------------------------------------------------------------------- geometry
class ResizeParams(_Params):
    size: int = Field(description="Target side in pixels (square, or the shorter side).", gt=0)
    keep_aspect: bool = Field(
        False, description="Resize the shorter side to size, keeping the aspect ratio."
    )


@image_step("resize", ResizeParams)
def resize(records: list[Record], params: ResizeParams, ctx: StepContext) -> list[Record]:
    """Resize images (bilinear) to size x size, or the shorter side to size."""
    from PIL import Image

    def one(image: np.ndarray, rng: random.Random) -> np.ndarray:
        h, w = image.shape[:2]
        if params.keep_aspect:
            scale = params.size / min(h, w)
            shape = (max(1, round(w * scale)), max(1, round(h * scale)))
        else:
            shape = (params.size, params.size)
        if shape == (w, h):
            return image
        return _from_pil(_to_pil(image).resize(shape, Image.Resampling.BILINEAR))

    return _map(records, one, ctx, "resize")


class CropParams(_Params):
    size: int = Field(description="Side of the square crop in pixels.", gt=0)


@image_step("center_crop", CropParams)
def center_crop(records: list[Record], params: CropParams, ctx: StepContext) -> list[Record]:
    """Cut the central size x size square (zero-padding smaller images)."""

    def one(image: np.ndarray, rng: random.Random) -> np.ndarray:
        image = _pad_to(image, params.size)
        h, w = image.shape[:2]
        return _crop(image, params.size, (h - params.size) // 2, (w - params.size) // 2)

    return _map(records, one, ctx, "center_crop")


class RandomCropParams(_Params):
    size: int = Field(description="Side of the square crop in pixels.", gt=0)
    padding: int = Field(0, ge=0, description="Zero padding added on every side first.")


@image_step("random_crop", RandomCropParams)
def random_crop(records: list[Record], params: RandomCropParams, ctx: StepContext) -> list[Record]:
    """Cut a size x size square at a random place (after optional zero padding); seeded."""

    def one(image: np.ndarray, rng: random.Random) -> np.ndarray:
        image = _pad_to(_pad(image, params.padding), params.size)
        h, w = image.shape[:2]
        top = rng.randint(0, h - params.size)
        left = rng.randint(0, w - params.size)
        return _crop(image, params.size, top, left)

    return _map(records, one, ctx, "random_crop")


class FlipParams(_Params):
    p: float = Field(0.5, ge=0, le=1, description="Probability of flipping an image.")


@image_step("hflip", FlipParams)
def hflip(records: list[Record], params: FlipParams, ctx: StepContext) -> list[Record]:
    """Mirror images left-right with probability p; seeded."""

    def one(image: np.ndarray, rng: random.Random) -> np.ndarray:
        return image[:, ::-1].copy() if rng.random() < params.p else image

    return _map(records, one, ctx, "hflip")


class RotateParams(_Params):
    degrees: float = Field(
        10.0, gt=0, le=45, description="Rotate by a random angle in [-degrees, degrees]."
    )


@image_step("rotate", RotateParams)
def rotate(records: list[Record], params: RotateParams, ctx: StepContext) -> list[Record]:
    """Rotate images by a small random angle (bilinear, same size, zero fill); seeded.
    Images of one shape are rotated together (it runs per train batch)."""
    import numpy as np

    angles = [_rng(ctx, r, "rotate").uniform(-params.degrees, params.degrees) for r in records]
    shapes = {r["image"].shape for r in records}
    if len(shapes) == 1:
        turned = list(rotate_bilinear(np.stack([r["image"] for r in records]), angles))
    else:
        turned = [
            rotate_bilinear(r["image"][None], [a])[0] for r, a in zip(records, angles, strict=True)
        ]
    return [{**r, "image": image} for r, image in zip(records, turned, strict=True)]


def rotate_bilinear(images: np.ndarray, degrees: list[float]) -> np.ndarray:
    """(N, H, W, C) uint8 images, each turned counter-clockwise by its angle about the
    image centre: the same pixels as Pillow's `rotate(angle, BILINEAR, fillcolor=0)`
    (pixel-centre sampling, edge rows and columns clamped, a source point outside the
    image filled with 0, the blend truncated to uint8), in numpy for a whole batch at
    once: one Pillow call per image costs more than a small model's training step."""
    import numpy as np

    n, h, w, c = images.shape
    turn = -np.radians(np.asarray(degrees, dtype=np.float64))
    cos, sin = np.round(np.cos(turn), 15)[:, None], np.round(np.sin(turn), 15)[:, None]
    xs, ys = _centred_grid(h, w)
    x_in = cos * xs + sin * ys + w / 2  # where each output pixel samples from: (N, H*W)
    y_in = cos * ys - sin * xs + h / 2
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    x0, y0 = np.floor(x_in - 0.5), np.floor(y_in - 0.5)
    dx, dy = (x_in - 0.5 - x0)[..., None], (y_in - 0.5 - y0)[..., None]
    # Clamping both neighbours to the image is Pillow's edge rule (its "row below is out:
    # reuse this row" is the same as clamping that row's index).
    left, right = np.clip(x0, 0, w - 1).astype(np.intp), np.clip(x0 + 1, 0, w - 1).astype(np.intp)
    upper, lower = (
        np.clip(y0, 0, h - 1).astype(np.intp) * w,
        np.clip(y0 + 1, 0, h - 1).astype(np.intp) * w,
    )
    src = images.reshape(n, h * w, c).astype(np.float64)
    k = np.arange(n)[:, None]
    a, b = src[k, upper + left], src[k, upper + right]
    top = a + (b - a) * dx
    a, b = src[k, lower + left], src[k, lower + right]
    bottom = a + (b - a) * dx
    value = (top + (bottom - top) * dy) * inside[..., None]
    return value.astype(np.uint8).reshape(n, h, w, c)  # truncated, as Pillow stores it


@functools.cache
def _centred_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Output pixel centres relative to the image centre, flattened: x and y, (H*W,)."""
    import numpy as np

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    return (xs - w / 2).ravel(), (ys - h / 2).ravel()


# --------------------------------------------------------------------------- colour
class ConvertChannelsParams(_Params):
    mode: Literal["grey", "rgb"] = Field(
        description="grey: 1 channel (ITU-R 601 luma); rgb: 3 channels (grey repeated)."
    )


@image_step("convert_channels", ConvertChannelsParams)
def convert_channels(
    records: list[Record], params: ConvertChannelsParams, ctx: StepContext
) -> list[Record]:
    """Convert images to 1 (grey) or 3 (RGB) channels."""
    import numpy as np

    def one(image: np.ndarray, rng: random.Random) -> np.ndarray:
        if params.mode == "grey" and image.shape[2] == 3:
            return _from_pil(_to_pil(image).convert("L"))
        if params.mode == "rgb" and image.shape[2] == 1:
            return np.repeat(image, 3, axis=2)
        return image

    return _map(records, one, ctx, "convert_channels")


class NormalizeParams(_Params):
    mean: tuple[float, ...] | None = Field(
        None, description="Per-channel mean of x/255 (1 or C values); null: from the train split."
    )
    std: tuple[float, ...] | None = Field(
        None, description="Per-channel std of x/255 (1 or C values); null: from the train split."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> NormalizeParams:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean, std: give both or neither (neither: computed on train)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std: every value must be > 0")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean, std: {len(self.mean)} vs {len(self.std)} values")
        return self


@image_step("normalize", NormalizeParams)
def normalize(records: list[Record], params: NormalizeParams, ctx: StepContext) -> list[Record]:
    """Scale pixels to (x/255 - mean)/std as batches are built (must be the last step)."""
    # The prepared data keeps uint8 pixels (4x smaller than floats, and what the exported
    # image processor expects); the scaling itself happens at batch time.
    return [dict(r) for r in records]


def apply_steps(
    image: np.ndarray, steps: list[tuple[Step, BaseModel]], seed: int, index: int
) -> np.ndarray:
    """Run image steps on one (H, W, C) uint8 image, seeded by (seed, index)."""
    return apply_steps_batch([image], steps, seed, [index])[0]


def apply_steps_batch(
    images: list[np.ndarray], steps: list[tuple[Step, BaseModel]], seed: int, indices: list[int]
) -> list[np.ndarray]:
    """Run image steps on a batch of (H, W, C) uint8 images together, each seeded by (seed,
    its index): the same images as one at a time, in fewer, larger operations."""
    records: list[Record] = [{"id": i, "image": im} for i, im in zip(indices, images, strict=True)]
    done, _ = run_pipeline(records, steps, StepContext(seed=seed))
    return [r["image"] for r in done]
