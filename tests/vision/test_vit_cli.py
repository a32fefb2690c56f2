"""ViT end to end through the real CLI: train, eval (misclassified.png), export --format hf
(with the image processor), other image sources through the same recipe, MIM masking,
MIM -> classification, and exact resume with on-the-fly augmentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.vision.conftest import VIT_TINY, write_manifest


def train(ftc, recipe: str, *overrides: str) -> dict:
    result = ftc("train", recipe, *VIT_TINY, *overrides, "--json")
    assert result.code == 0, result.err
    return result.json()


def check_pixel_baseline(flat: dict, metrics: dict, run: Path) -> None:
    """The pixel baseline eval reports equals logistic regression fitted here on the
    run's prepared train pixels (scaled to [0, 1]) and scored on its test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    prepared = Path(json.loads((run / "provenance.json").read_text())["data"]["path"])

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.load(prepared / name / "pixels.npy")  # uint8 (N, 1, 8, 8): no downscale
        x = pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0
        return x, np.load(prepared / name / "labels.npy")

    (x_train, y_train), (x_test, y_test) = split("train"), split("test")
    pred = LogisticRegression(max_iter=1000).fit(x_train, y_train).predict(x_test)
    assert flat["baseline_accuracy"] == pytest.approx(accuracy_score(y_test, pred), abs=1e-12)
    assert flat["baseline_f1_macro"] == pytest.approx(
        f1_score(y_test, pred, average="macro"), abs=1e-12
    )
    assert metrics["baseline"]["model"] == "logistic_regression_on_pixels"
    assert metrics["baseline"]["train_rows"] == len(y_train)


def test_train_eval_export_vit_classification(ftc, isolated: Path):
    payload = train(ftc, "vit-digits", "train.run_dir=runs/vit")
    assert payload["steps"] == 8 and 0 <= payload["metrics"]["accuracy"] <= 1
    run = isolated / "runs/vit"
    best = run / "best"
    assert (best / "preprocessor_config.json").is_file()  # the processor travels with it

    result = ftc("eval", run, "--split", "test", "--json")
    assert result.code == 0, result.err
    report = result.json()
    out = run / "eval/test"
    assert report["outputs"]["misclassified_png"] == str(out / "misclassified.png")
    assert Image.open(out / "misclassified.png").size[0] > 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    assert len(metrics["confusion_matrix"]) == 10
    assert "misclassified.png" in (out / "report.md").read_text()
    assert "digits[" in (out / "report.md").read_text()  # examples name their image
    check_pixel_baseline(report["metrics"], metrics, run)

    result = ftc("export", run, "--format", "hf", "--json")
    assert result.code == 0, result.err
    assert result.json()["parity"]["max_abs_diff"] <= 1e-4
    export = run / "export/hf"
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(export).eval()
    processor = AutoImageProcessor.from_pretrained(export)
    config = json.loads((export / "preprocessor_config.json").read_text())
    prepared_mean = json.loads((run / "provenance.json").read_text())["data"]["path"]
    info = json.loads((Path(prepared_mean) / "manifest.json").read_text())["images"]
    assert config["image_mean"] == info["mean"] and config["image_std"] == info["std"]
    # the processor turns raw digits into what the model was evaluated on
    from sklearn.datasets import load_digits

    raw = np.round(load_digits().images[:4] * (255 / 16)).astype(np.uint8)
    inputs = processor(images=[Image.fromarray(x) for x in raw], return_tensors="pt")
    expected = (raw[:, None].astype(np.float32) / 255 - info["mean"][0]) / info["std"][0]
    assert np.allclose(inputs["pixel_values"].numpy(), expected, atol=1e-5)
    with torch.inference_mode():
        assert model(**inputs).logits.shape == (4, 10)


@pytest.mark.parametrize("source", ["folder_grey_28px", "manifest_rgb_20px"])
def test_other_images_train_through_the_same_recipe(ftc, isolated: Path, folder28, source):
    """Only the source and the image size change; the recipe shape stays vit-digits'."""
    if source == "folder_grey_28px":
        path, fmt, channels = folder28, "imagefolder", 1
    else:
        path, fmt, channels = write_manifest(isolated / "rgb", "jsonl", size=20), "auto", 3
    payload = train(
        ftc,
        "vit-digits",
        f"data.source.format={fmt}",
        f"data.source.path={path}",
        "model.image_size=16",
        "train.run_dir=runs/other",
    )
    run = isolated / "runs/other"
    config = json.loads((run / "best/config.json").read_text())
    assert (config["image_size"], config["num_channels"]) == (16, channels)
    assert payload["metrics"]["num_examples"] > 0

    # a new folder/manifest through the run's pipeline: `eval --data`
    result = ftc("eval", run, "--data", path, "--json")
    assert result.code == 0, result.err
    assert result.json()["metrics"]["num_examples"] == 60

    # the saved processor reproduces prepare's resize + scaling from the original file
    from transformers import AutoImageProcessor

    from fine_tune_cli.data.image_sources import read_images
    from fine_tune_cli.data.images import fit_image
    from fine_tune_cli.targets import resolve_target

    recipe = resolve_target(run).recipe
    record = read_images(recipe.data.source, need_label=True)[0]
    processor = AutoImageProcessor.from_pretrained(run / "best")
    file = path / record["source"] if fmt == "imagefolder" else path.parent / record["source"]
    got = processor(images=Image.open(file), return_tensors="pt")["pixel_values"][0].numpy()
    mean = np.asarray(processor.image_mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(processor.image_std, dtype=np.float32).reshape(-1, 1, 1)
    pixels = fit_image(record["image"], 16, channels).transpose(2, 0, 1).astype(np.float32)
    assert np.allclose(got, (pixels / 255 - mean) / std, atol=1e-5)


def test_mim_masks_follow_the_ratio(ftc, isolated: Path):
    from fine_tune_cli.data.prepare import prepare_dataset
    from fine_tune_cli.recipe import load_recipe
    from fine_tune_cli.tasks import build_task

    args = ["data.source.limit=120", "mim.mask_ratio=0.25", "mim.mask_patch_size=4"]
    payload = train(ftc, "vit-mim-digits", *args, "train.run_dir=runs/mim")
    assert {"loss", "reconstruction_loss"} <= set(payload["metrics"])
    assert payload["metrics"]["reconstruction_loss"] > 0
    result = ftc("eval", isolated / "runs/mim", "--json")
    assert result.code == 0, result.err
    assert "reconstruction_loss" in result.json()["metrics"]
    result = ftc("export", isolated / "runs/mim", "--json")
    assert result.code == 2  # a pretraining model: nothing to serve, said in one line
    assert "fine-tune a classifier from it" in result.json()["message"]

    recipe = load_recipe("vit-mim-digits", args).recipe
    prepared, _ = prepare_dataset(recipe)
    task = build_task(recipe, prepared)
    idx = np.arange(32)
    valid = prepared.splits["validation"]
    masks = task.collate(valid, idx[: len(valid)])["bool_masked_pos"].numpy()
    # 8x8 images, 4x4 blocks: 4 blocks, 25% of them = 1 block = 4 of the 16 patches
    assert masks.shape[1] == 16
    assert (masks.sum(1) == 4).all()
    assert masks.mean() == pytest.approx(0.25)
    grid = masks.reshape(-1, 4, 4)
    assert all((g[:2, :2].all() or not g[:2, :2].any()) for g in grid)  # whole blocks
    again = task.collate(valid, idx[: len(valid)])["bool_masked_pos"].numpy()
    assert np.array_equal(masks, again)  # evaluation masks are fixed
    train_split = prepared.splits["train"]
    task.set_epoch(0)
    e0 = task.collate(train_split, idx)["bool_masked_pos"].numpy()
    task.set_epoch(1)
    e1 = task.collate(train_split, idx)["bool_masked_pos"].numpy()
    assert not np.array_equal(e0, e1) and (e1.sum(1) == 4).all()  # new masks every epoch

    # a different ratio through the CLI: half of the 16 patches
    recipe = load_recipe("vit-mim-digits", ["data.source.limit=120", "mim.mask_ratio=0.5"]).recipe
    assert ftc("prepare", "vit-mim-digits", "data.source.limit=120").code == 0
    task = build_task(recipe, prepare_dataset(recipe)[0])
    assert (task.collate(train_split, idx)["bool_masked_pos"].numpy().sum(1) == 8).all()


def test_mim_then_classification_loads_the_encoder(
    ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch
):
    train(ftc, "vit-mim-digits", "data.source.limit=120")  # -> ./runs/vit-mim-digits
    monkeypatch.setenv("FTC_RUNS_DIR", str(isolated / "runs"))  # the recipe's init_from
    payload = train(
        ftc,
        "vit-digits-from-mim",
        "data.source.limit=120",
        "train.max_steps=1",
        "optim.lr=1e-12",  # one step that cannot move the weights: compare them as loaded
        "optim.weight_decay=0",
    )
    run = Path(payload["run_dir"])
    log = (run / "train.log").read_text()
    assert f"initialised from {isolated / 'runs/vit-mim-digits/best'}" in log
    assert "newly initialised: 2 tensors (classifier." in log and "classifier.bias" in log
    assert "dropped (not used by this task)" in log and "decoder." in log
    source = load_file(isolated / "runs/vit-mim-digits/best/model.safetensors")
    tuned = load_file(run / "best/model.safetensors")
    encoder = [k for k in tuned if k.startswith("vit.")]
    assert encoder and set(encoder) <= set(source)
    for key in encoder:
        assert torch.allclose(tuned[key], source[key], atol=1e-8), key
    assert not any(k.startswith("classifier") for k in source)
    assert not any(k.startswith("decoder") for k in tuned)


def test_resume_with_augmentation_is_exact(ftc, isolated: Path):
    args = [
        "data.source.limit=120",
        "data.augment=[{random_crop: {size: 8, padding: 1}}, {rotate: {degrees: 10}}]",
        "train.max_steps=14",  # two epochs of 7 steps
        "train.save_every=3",
        "train.keep_last=10",
        "train.run_dir=runs/aug",
    ]
    train(ftc, "vit-digits", *args)
    run = isolated / "runs/aug"
    final = load_file(run / "checkpoints/step-000014/model.safetensors")
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r]
    assert json.loads((run / "provenance.json").read_text())["runtime"]["collate_workers"] == 1
    shutil.rmtree(run / "checkpoints/step-000014")
    # trained with a collation worker (train.workers auto: augmentation), resumed with the
    # thread: where batches are built changes nothing
    result = ftc(
        "train", "vit-digits", *VIT_TINY, *args, "train.workers=0",
        "--resume", run / "checkpoints/step-000003",
    )  # fmt: skip
    assert result.code == 0, result.err
    resumed = load_file(run / "checkpoints/step-000014/model.safetensors")
    for key, value in final.items():
        assert torch.equal(value, resumed[key]), key
    again = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r]
    assert again == losses
