"""Images as users have them, through the real CLI: JPEGs stored sideways with an EXIF
orientation tag (phone photos) decode upright in prepare and predict; an image folder with
only train/ and test/ gets a validation split carved out of train/ (stratified, seeded,
test/ untouched); and a run without validation data says so at start (images and text)."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fine_tune_cli.data.image_sources import decode_image
from tests.conftest import TINY
from tests.vision.conftest import VIT_TINY, digits, write_folder

ORIENTATION = 0x0112
# EXIF orientation -> np.rot90 turns (counter-clockwise) that make the stored pixels upright
UPRIGHT_TURNS = {6: -1, 8: 1, 3: 2}


def jpeg_bytes(array: np.ndarray, orientation: int | None) -> bytes:
    """`array` as a JPEG; with `orientation`, an EXIF tag saying how to turn it for display.
    The same pixels with and without the tag compress to the same image data."""
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def plain_decode(data: bytes) -> np.ndarray:
    """PIL's decode, tag ignored (the reference for the stored pixels)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def sideways(array: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for an upright `array` with this orientation tag."""
    return np.ascontiguousarray(np.rot90(array, -UPRIGHT_TURNS[orientation]))


def prepare(ftc, *overrides: str) -> tuple[dict, Path]:
    result = ftc("prepare", "vit-digits", *overrides, "--json")
    assert result.code == 0, result.err
    payload = result.json()
    return payload, Path(payload["outputs"]["prepared"])


def sources(prepared: Path, split: str) -> list[str]:
    return [json.loads(line)["text"] for line in (prepared / split / "texts.jsonl").open()]


# --------------------------------------------------------------------------- EXIF
@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_decode_turns_a_tagged_jpeg_upright(orientation: int):
    stored = np.zeros((12, 20), dtype=np.uint8)  # non-square: a turn swaps the sides
    stored[:, :6] = 255
    tagged = jpeg_bytes(stored, orientation)
    raw = plain_decode(jpeg_bytes(stored, None))
    assert np.array_equal(plain_decode(tagged), raw)  # same image data, only the tag differs
    image = decode_image(tagged)
    want = np.rot90(raw, UPRIGHT_TURNS[orientation])
    assert image.shape == (*want.shape, 1)
    assert np.array_equal(image[:, :, 0], want)


def test_prepare_stores_tagged_jpegs_upright(ftc, tmp_path: Path):
    """A folder of sideways-stored JPEGs (tag 6) prepares as the upright images."""
    images, labels = digits(30)
    root = tmp_path / "photos"
    raw: dict[str, np.ndarray] = {}
    for i, (array, label) in enumerate(zip(images, labels, strict=True)):
        upright = np.asarray(Image.fromarray(array).resize((16, 16)))
        stored = sideways(upright, 6)
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.jpg").write_bytes(jpeg_bytes(stored, 6))
        raw[f"class{label}/{i:03d}.jpg"] = plain_decode(jpeg_bytes(stored, None))
    _, prepared = prepare(
        ftc,
        "data.source.format=imagefolder",
        f"data.source.path={root}",
        "model.image_size=null",
    )
    checked = 0
    for split in ("train", "validation", "test"):
        pixels = np.load(prepared / split / "pixels.npy")
        for source, got in zip(sources(prepared, split), pixels, strict=True):
            assert np.array_equal(got[0], np.rot90(raw[source], UPRIGHT_TURNS[6])), source
            assert not np.array_equal(got[0], raw[source])
            checked += 1
    assert checked == 30


def test_predict_reads_a_tagged_jpeg_as_the_upright_image(ftc, tmp_path: Path):
    result = ftc("train", "vit-digits", *VIT_TINY, "train.max_steps=4", "train.run_dir=vit")
    assert result.code == 0, result.err
    images, _ = digits(4, classes=10)
    new = tmp_path / "new"
    new.mkdir()
    for i, array in enumerate(images):
        stored = sideways(array, 8)
        (new / f"{i}-tagged.jpg").write_bytes(jpeg_bytes(stored, 8))
        (new / f"{i}-untagged.jpg").write_bytes(jpeg_bytes(stored, None))
        upright = np.rot90(plain_decode(jpeg_bytes(stored, None)), UPRIGHT_TURNS[8])
        Image.fromarray(np.ascontiguousarray(upright)).save(new / f"{i}-upright.png")
    result = ftc("predict", tmp_path / "vit", new, "--out", "-")
    assert result.code == 0, result.err
    probs = {row["id"]: row["probs"] for row in map(json.loads, result.out.splitlines())}
    for i in range(len(images)):
        assert probs[f"{i}-tagged.jpg"] == probs[f"{i}-upright.png"]
        assert probs[f"{i}-tagged.jpg"] != probs[f"{i}-untagged.jpg"]


# --------------------------------------------------------------------------- splits
@pytest.fixture
def train_test_folder(tmp_path: Path) -> Path:
    """The usual public layout: train/<class>/ and test/<class>/, no validation folder."""
    root = tmp_path / "public"
    write_folder(root / "train", n=120, size=8)
    write_folder(root / "test", n=30, size=8)
    return root


def folder_prepare(ftc, root: Path, *overrides: str) -> tuple[dict, Path]:
    return prepare(
        ftc,
        "data.source.format=imagefolder",
        f"data.source.path={root}",
        "data.source.split_folders=true",
        *overrides,
    )


def test_validation_is_carved_out_of_train_stratified(ftc, train_test_folder: Path):
    payload, prepared = folder_prepare(ftc, train_test_folder, "data.split.validation=0.2")
    assert payload["splits"] == {"train": 96, "validation": 24, "test": 30}
    train, valid, test = (sources(prepared, s) for s in ("train", "validation", "test"))
    on_disk = {
        p.relative_to(train_test_folder).as_posix() for p in train_test_folder.rglob("*.png")
    }
    assert sorted(test) == sorted(s for s in on_disk if s.startswith("test/"))  # untouched
    assert set(train) | set(valid) == {s for s in on_disk if s.startswith("train/")}
    assert not set(train) & set(valid)
    # stratified: each class holds out 20% of its train/ images (to the nearest image)
    per_class = Counter(s.split("/")[1] for s in train + valid)
    held = Counter(s.split("/")[1] for s in valid)
    assert set(held) == set(per_class)
    for name, count in per_class.items():
        assert abs(held[name] - 0.2 * count) <= 1, (name, held[name], count)


def test_carved_validation_is_seeded(ftc, train_test_folder: Path, tmp_path: Path):
    _, first = folder_prepare(ftc, train_test_folder, "data.split.seed=3")
    payload, again = folder_prepare(
        ftc, train_test_folder, "data.split.seed=3", f"data.cache_dir={tmp_path / 'other'}"
    )
    assert not payload["cache_hit"]  # prepared a second time, not read back
    assert sources(first, "validation") == sources(again, "validation")
    _, reseeded = folder_prepare(ftc, train_test_folder, "data.split.seed=4")
    assert sorted(sources(reseeded, "validation")) != sorted(sources(first, "validation"))
    assert sources(reseeded, "test") == sources(first, "test")


def test_a_validation_folder_is_still_used_as_is(ftc, tmp_path: Path):
    root = tmp_path / "three"
    write_folder(root / "train", n=45, size=8)
    write_folder(root / "val", n=15, size=8)
    write_folder(root / "test", n=15, size=8)
    payload, prepared = folder_prepare(ftc, root, "data.split.validation=0.3")
    assert payload["splits"] == {"train": 45, "validation": 15, "test": 15}
    assert all(s.startswith("val/") for s in sources(prepared, "validation"))


# --------------------------------------------------------------------------- warning
NO_VALIDATION = "no validation split"
DISABLED = ("no evaluation during training", "best/ is the last step", "no early stopping")


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if NO_VALIDATION in line]


def test_image_run_without_validation_says_so_at_start(ftc, train_test_folder: Path):
    result = ftc(
        "train",
        "vit-digits",
        *VIT_TINY,
        "train.max_steps=2",
        "data.source.format=imagefolder",
        f"data.source.path={train_test_folder}",
        "data.source.split_folders=true",
        "data.split.validation=0",
        "train.early_stopping.patience=2",
        "--json",
    )
    assert result.code == 0, result.err
    (line,) = warning_lines(result.err)
    assert "WARNING" in line and all(part in line for part in DISABLED)
    assert "patience is ignored" in line and "validation/ folder" in line
    lines = result.err.splitlines()
    start = next(i for i, text in enumerate(lines) if " model: " in text)
    assert lines.index(line) < start  # said at start, before the model is even built
    assert result.json()["best_step"] == 2  # best/ is indeed the last step


def test_carved_validation_evaluates_without_the_warning(ftc, train_test_folder: Path):
    result = ftc(
        "train",
        "vit-digits",
        *VIT_TINY,
        "train.max_steps=2",
        "data.source.format=imagefolder",
        f"data.source.path={train_test_folder}",
        "data.source.split_folders=true",
        "--json",
    )
    assert result.code == 0, result.err
    assert not warning_lines(result.err)
    assert "accuracy" in result.json()["metrics"]  # evaluated on the carved split


def test_text_run_without_validation_says_so(ftc):
    result = ftc("train", "demo", *TINY, "train.max_steps=2", "data.split.validation=0")
    assert result.code == 0, result.err
    (line,) = warning_lines(result.err)
    assert all(part in line for part in DISABLED)
    assert "data.split.validation > 0" in line
