"""Image sources through the real CLI (`ftc prepare`): digits, image folders (one folder,
or train/validation/test folders), csv/jsonl manifests and npz arrays; grey and RGB;
corrupt images named in one line (exit 3) or skipped; recipe mistakes exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.vision.conftest import write_folder, write_manifest, write_npz


def prepare(ftc, *overrides: str) -> dict:
    result = ftc("prepare", "vit-digits", *overrides, "--json")
    assert result.code == 0, result.err
    return result.json()


def manifest(payload: dict) -> dict:
    return json.loads((Path(payload["outputs"]["prepared"]) / "manifest.json").read_text())


def pixels(payload: dict, split: str = "train") -> np.ndarray:
    return np.load(Path(payload["outputs"]["prepared"]) / split / "pixels.npy")


def test_digits_need_no_file(ftc):
    payload = prepare(ftc)
    assert payload["splits"] == {"train": 1347, "validation": 180, "test": 270}
    assert payload["labels"] == [str(d) for d in range(10)]
    info = manifest(payload)["images"]
    assert (info["size"], info["channels"], info["normalize"]) == (8, 1, True)
    train = pixels(payload)
    assert train.shape == (1347, 1, 8, 8) and train.dtype == np.uint8
    # normalisation statistics come from the train split (of x / 255)
    assert info["mean"][0] == pytest.approx(train.mean() / 255, abs=1e-5)
    assert (Path(payload["outputs"]["prepared"]) / "processor/preprocessor_config.json").is_file()
    again = prepare(ftc)
    assert again["cache_hit"] and again["hash"] == payload["hash"]


def test_image_folder_28px_grey_resized_to_model_image_size(ftc, folder28: Path):
    payload = prepare(
        ftc, "data.source.format=imagefolder", f"data.source.path={folder28}", "model.image_size=16"
    )
    assert payload["labels"] == ["one", "two", "zero"]  # the class folder names
    assert sum(payload["splits"].values()) == 60
    assert pixels(payload).shape[1:] == (1, 16, 16)
    sources = (Path(payload["outputs"]["prepared"]) / "test/texts.jsonl").read_text()
    assert ".png" in sources  # reports name each image's file


def test_image_folder_keeps_its_own_size_without_model_image_size(ftc, folder28: Path):
    payload = prepare(
        ftc, f"data.source.path={folder28}", "data.source.format=auto", "model.image_size=null"
    )
    assert pixels(payload).shape[1:] == (1, 28, 28)


def test_image_folder_with_split_folders(ftc, tmp_path: Path):
    write_folder(tmp_path / "ds/train", n=45)
    write_folder(tmp_path / "ds/val", n=15)
    payload = prepare(
        ftc,
        "data.source.format=imagefolder",
        f"data.source.path={tmp_path / 'ds'}",
        "data.source.split_folders=true",
    )
    assert payload["splits"] == {"train": 45, "validation": 15, "test": 0}


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_of_rgb_images(ftc, tmp_path: Path, kind: str):
    path = write_manifest(tmp_path, kind, size=16, rgb=True)
    payload = prepare(
        ftc, "data.source.format=image_manifest", f"data.source.path={path}", "model.image_size=16"
    )
    assert payload["labels"] == ["digit0", "digit1", "digit2"]
    assert pixels(payload).shape[1:] == (3, 16, 16)
    info = manifest(payload)["images"]
    assert len(info["mean"]) == len(info["std"]) == 3  # per-channel statistics


def test_npz_arrays(ftc, tmp_path: Path):
    path = write_npz(tmp_path / "digits.npz")
    payload = prepare(ftc, "data.source.format=npz", f"data.source.path={path}")
    assert payload["labels"] == ["0", "1", "2"]
    assert pixels(payload).shape[1:] == (1, 8, 8)


def corrupt_folder(tmp_path: Path) -> tuple[Path, Path]:
    root = write_folder(tmp_path / "bad", n=30)
    broken = root / "one" / "broken.png"
    good = next((root / "two").glob("*.png")).read_bytes()
    broken.write_bytes(good[: len(good) // 2])  # a truncated PNG
    return root, broken


def test_corrupt_png_is_named_in_one_line_exit_3(ftc, tmp_path: Path):
    root, broken = corrupt_folder(tmp_path)
    result = ftc(
        "train", "vit-digits", "data.source.format=imagefolder", f"data.source.path={root}"
    )
    assert result.code == 3, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(broken) in lines[0] and "on_bad_image" in lines[0]
    assert "Traceback" not in result.err
    payload = ftc(
        "prepare",
        "vit-digits",
        "data.source.format=imagefolder",
        f"data.source.path={root}",
        "--json",
    ).json()
    assert payload["exit_code"] == 3 and str(broken) in payload["message"]


def test_corrupt_png_skipped_with_a_count(ftc, tmp_path: Path):
    root, broken = corrupt_folder(tmp_path)
    result = ftc(
        "prepare",
        "vit-digits",
        "data.source.format=imagefolder",
        f"data.source.path={root}",
        "data.source.on_bad_image=skip",
        "--json",
    )
    assert result.code == 0, result.err
    assert sum(result.json()["splits"].values()) == 30  # 30 good ones; the bad one skipped
    assert "skipped 1 unreadable image" in result.err and str(broken) in result.err


def test_images_of_different_sizes_need_an_image_size(ftc, tmp_path: Path):
    root = write_folder(tmp_path / "mixed", n=30, size=28)
    write_folder(tmp_path / "mixed", n=6, size=20)  # overwrites a few with 20x20 images
    result = ftc(
        "prepare", "vit-digits", f"data.source.path={root}", "data.source.format=auto",
        "model.image_size=null", "--json",
    )  # fmt: skip
    assert result.code == 3
    assert "different sizes" in result.json()["message"]
    assert "model.image_size" in result.json()["message"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.patch_size=3"], "model.image_size: 8 is not divisible by the patch size 3"),
        (["data.source.format=csv", "data.source.path=x.csv"], "data.source.format: vit reads"),
        (["data.steps=[strip_html]"], "data.steps[0]: 'strip_html' is a text step"),
        (["data.steps=[normalize, hflip]"], "data.steps[0]: normalize must be the last step"),
        (["data.source.path=somewhere"], "data.source.path: format digits is bundled"),
        (["data.source.image=file"], "data.source.image: not used by format 'digits'"),
        (["mim.mask_ratio=0.3"], "mim: only used by task mim"),
        (["data.augment=[{rotate: {degrees: 90}}]"], "rotate.degrees"),
    ],
)
def test_recipe_mistakes_exit_2_naming_the_key(ftc, overrides: list[str], expected: str):
    result = ftc("recipes", "validate", "vit-digits", *overrides, "--json")
    assert result.code == 2, result.err
    assert expected in result.json()["message"]


def test_text_recipes_refuse_image_sources(ftc):
    result = ftc("recipes", "validate", "demo", "data.source.format=npz", "--json")
    assert result.code == 2
    assert "'npz' is an image source" in result.json()["message"]


def test_dry_run_counts_parameters_for_an_image_folder(ftc, folder28: Path):
    result = ftc(
        "train", "vit-digits", f"data.source.path={folder28}", "data.source.format=auto",
        "model.image_size=28", "--dry-run", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["parameters"] > 10_000
