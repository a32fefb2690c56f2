"""Image data for the vision tests: real scikit-learn digits written as PNG folders,
manifests and npz files (upscaled to 28x28 grey or 16x16 RGB), and tiny-ViT settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tiny and fast: 8x8 digits, patch 2 (16 patches), a few hundred images, few steps.
VIT_TINY = [
    "model.size=tiny",
    "data.source.limit=240",
    "train.max_steps=8",
    "train.eval_every=4",
    "train.batch_size=16",
]


def digits(n: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The first n digits of the first `classes` classes: uint8 (n, 8, 8), labels (n,)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = np.nonzero(data.target < classes)[0][:n]
    images = np.round(data.images[keep] * (255 / 16)).astype(np.uint8)
    return images, data.target[keep]


def as_image(array: np.ndarray, size: int, rgb: bool) -> Image.Image:
    image = Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR)
    if rgb:  # colour the digit so the channels differ
        grey = np.asarray(image)
        image = Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1))
    return image


def write_folder(root: Path, n: int = 60, size: int = 28, rgb: bool = False) -> Path:
    """root/<class>/<i>.png with n real digits of 3 classes."""
    images, labels = digits(n)
    names = {0: "zero", 1: "one", 2: "two"}
    for i, (array, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        as_image(array, size, rgb).save(folder / f"{i:04d}.png")
    return root


def write_manifest(root: Path, kind: str, n: int = 60, size: int = 16, rgb: bool = True) -> Path:
    """A csv or jsonl manifest of `path,label` (paths relative to the manifest)."""
    images, labels = digits(n)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (array, label) in enumerate(zip(images, labels, strict=True)):
        name = f"img/{i:04d}.jpg" if i % 2 else f"img/{i:04d}.png"
        as_image(array, size, rgb).save(root / name)
        rows.append({"path": name, "label": f"digit{int(label)}"})
    path = root / f"manifest.{kind}"
    if kind == "csv":
        path.write_text("path,label\n" + "".join(f"{r['path']},{r['label']}\n" for r in rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_npz(path: Path, n: int = 60) -> Path:
    images, labels = digits(n)
    np.savez(path, images=images.astype(np.float32) / 255.0, labels=labels)
    return path


@pytest.fixture
def folder28(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "digits28")
