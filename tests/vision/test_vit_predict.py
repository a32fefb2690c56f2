"""`ftc predict` on images through the real CLI, with a tiny ViT trained once on the
digits for the module: a folder (recursive, non-image files skipped), a single file, csv
and jsonl manifests and stdin give the same probabilities for the same image; those are
the model's own forward pass on the normalised pixels; onnx and pt2 exports agree
with best/; the test split written as PNGs scores what `ftc eval` reports; a corrupt
image fails with exit 3 and writes nothing; a MIM model is refused (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli_env, run_cli
from tests.vision.conftest import VIT_TINY, digits

FAST_TRAIN = [*VIT_TINY, "data.source.limit=400", "train.max_steps=120", "train.eval_every=60"]
IMAGES = ["a.png", "b.png", "c.png", "sub/d.png", "sub/deeper/e.png"]


def read_jsonl(path_or_text: Path | str) -> list[dict]:
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def probs_array(rows: list[dict], labels: list[str]) -> np.ndarray:
    return np.array([[row["probs"][k] for k in labels] for row in rows])


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vit-predict")


@pytest.fixture(scope="module")
def run_dir(workdir: Path, cache_dir: Path) -> Path:
    with cli_env(cache_dir, workdir):
        result = run_cli("train", "vit-digits", *FAST_TRAIN, "train.run_dir=runs/vit", "--json")
    assert result.code == 0, result.err
    return workdir / "runs" / "vit"


@pytest.fixture(scope="module")
def folder(workdir: Path) -> Path:
    """Five real digits as 8x8 grey PNGs (two in sub-folders) and two non-image files."""
    root = workdir / "new_digits"
    images, _ = digits(len(IMAGES), classes=10)
    for name, array in zip(IMAGES, images, strict=True):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "labels.csv").write_text("path\nd.png\n")
    return root


@pytest.fixture(scope="module")
def predicted(run_dir: Path, folder: Path, workdir: Path, cache_dir: Path) -> tuple[dict, list]:
    with cli_env(cache_dir, workdir):
        result = run_cli("predict", run_dir, folder, "--out", "p.jsonl", "--json")
    assert result.code == 0, result.err
    return result.json(), read_jsonl(workdir / "p.jsonl")


@pytest.fixture(scope="module")
def labels(run_dir: Path) -> list[str]:
    config = json.loads((run_dir / "best" / "config.json").read_text())
    return [config["id2label"][str(i)] for i in range(len(config["id2label"]))]


def predict_rows(workdir: Path, cache_dir: Path, *args: str | Path, stdin: bytes | None = None):
    with cli_env(cache_dir, workdir):
        result = run_cli("predict", *args, "--out", "-", stdin=stdin)
    assert result.code == 0, result.err
    return read_jsonl(result.out)


# --------------------------------------------------------------------------- tests
def test_folder_gives_one_row_per_image_in_sorted_relative_order(predicted, labels) -> None:
    payload, rows = predicted
    assert payload["status"] == "ok" and payload["count"] == len(IMAGES)
    assert payload["outputs"]["predictions"] == "p.jsonl" and payload["format"] == "hf"
    assert payload["model_dir"].endswith("best")
    assert [row["id"] for row in rows] == sorted(IMAGES)  # non-image files skipped
    assert sum(payload["label_counts"].values()) == len(IMAGES)
    for row in rows:
        assert list(row["probs"]) == labels
        assert abs(sum(row["probs"].values()) - 1) < 1e-4
        assert row["label"] == max(row["probs"], key=row["probs"].get)
        assert row["score"] == row["probs"][row["label"]]


def test_probabilities_are_the_models_forward_pass(run_dir, folder, predicted, labels) -> None:
    """By hand: PNG -> x / 255 -> (x - mean) / std with the saved processor's stats ->
    the HF model -> softmax."""
    import torch
    from transformers import AutoModelForImageClassification

    best = run_dir / "best"
    config = json.loads((best / "preprocessor_config.json").read_text())
    mean, std = np.array(config["image_mean"]), np.array(config["image_std"])
    _, rows = predicted
    pixels = np.stack([np.asarray(Image.open(folder / row["id"])) for row in rows])[:, None]
    x = (pixels.astype(np.float32) / 255 - mean[:, None, None]) / std[:, None, None]
    model = AutoModelForImageClassification.from_pretrained(best).eval()
    with torch.inference_mode():
        logits = model(pixel_values=torch.from_numpy(x.astype(np.float32))).logits
    want = torch.softmax(logits.double(), -1).numpy()
    np.testing.assert_allclose(probs_array(rows, labels), want, atol=2e-6)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_exports_predict_what_best_predicts(
    run_dir, folder, predicted, labels, workdir, cache_dir, fmt: str
) -> None:
    with cli_env(cache_dir, workdir):
        result = run_cli("export", run_dir, "--format", fmt, "export.latency_runs=2", "--json")
    assert result.code == 0, result.err
    # optimum's layout: config.json + the image processor beside the artefact
    assert {"config.json", "preprocessor_config.json"} <= {
        p.name for p in (run_dir / "export" / fmt).iterdir()
    }
    got = predict_rows(workdir, cache_dir, run_dir / "export" / fmt, folder)
    _, want = predicted
    assert [(r["id"], r["label"]) for r in got] == [(r["id"], r["label"]) for r in want]
    np.testing.assert_allclose(probs_array(got, labels), probs_array(want, labels), atol=1e-4)


def test_single_file_manifests_and_stdin_predict_the_same(
    run_dir, folder, predicted, labels, workdir, cache_dir
) -> None:
    _, rows = predicted
    by_id = {row["id"]: row for row in rows}

    one = predict_rows(workdir, cache_dir, run_dir, folder / "sub" / "d.png")
    assert [r["id"] for r in one] == ["d.png"] and one[0]["probs"] == by_id["sub/d.png"]["probs"]

    # Manifests elsewhere, paths relative to the manifest; ids are row indices.
    listed = ["sub/deeper/e.png", "a.png", "c.png"]
    manifests = workdir / "manifests"
    manifests.mkdir(exist_ok=True)
    rel = Path("..") / folder.name
    (manifests / "m.csv").write_text("path,note\n" + "".join(f"{rel / p},x\n" for p in listed))
    (manifests / "m.jsonl").write_text(
        "".join(json.dumps({"path": str(rel / p)}) + "\n" for p in listed)
    )
    for manifest in ("m.csv", "m.jsonl"):
        got = predict_rows(workdir, cache_dir, run_dir, manifests / manifest)
        assert [r["id"] for r in got] == [0, 1, 2], manifest
        assert [r["probs"] for r in got] == [by_id[p]["probs"] for p in listed], manifest

    # stdin: one path per line (blank lines skipped); the id is the path as given.
    paths = [str(folder / "b.png"), "", str(folder / "sub" / "d.png")]
    got = predict_rows(workdir, cache_dir, run_dir, "-", stdin="\n".join(paths).encode())
    assert [r["id"] for r in got] == [paths[0], paths[2]]
    assert [r["probs"] for r in got] == [by_id["b.png"]["probs"], by_id["sub/d.png"]["probs"]]

    # An RGB file for this grey model: converted to grey (luma), as convert_channels does.
    Image.open(folder / "a.png").convert("RGB").save(workdir / "a_rgb.png")
    got = predict_rows(workdir, cache_dir, run_dir, workdir / "a_rgb.png")
    assert got[0]["probs"] == by_id["a.png"]["probs"]


def test_corrupt_image_exits_3_naming_it_and_writes_nothing(
    run_dir, folder, workdir, cache_dir
) -> None:
    bad = workdir / "with_bad"
    shutil.copytree(folder, bad)
    (bad / "sub" / "broken.png").write_bytes((folder / "a.png").read_bytes()[:60])
    with cli_env(cache_dir, workdir):
        result = run_cli("predict", run_dir, bad, "--out", "bad.jsonl", "--json")
    assert result.code == 3, result.err
    message = result.json()["message"]
    assert "broken.png" in message and "corrupt or unreadable image" in message
    assert not (workdir / "bad.jsonl").exists() and not list(workdir.glob(".bad.jsonl*"))

    with cli_env(cache_dir, workdir):  # an input that is neither image, folder nor manifest
        result = run_cli("predict", run_dir, bad / "notes.txt", "--json")
    assert result.code == 3 and "manifest" in result.json()["message"]


def test_test_split_as_png_files_scores_what_eval_reports(
    run_dir, labels, workdir, cache_dir
) -> None:
    """The prepared test split's pixels written as PNGs: predict's accuracy on them is the
    accuracy `ftc eval` reports for the same model (same pixels, same preprocessing)."""
    with cli_env(cache_dir, workdir):
        result = run_cli("eval", run_dir, "--split", "test", "--json")
    assert result.code == 0, result.err
    eval_metrics = result.json()["metrics"]
    prepared = Path(json.loads((run_dir / "provenance.json").read_text())["data"]["path"])
    names = json.loads((prepared / "manifest.json").read_text())["labels"]
    pixels = np.load(prepared / "test" / "pixels.npy")  # uint8 (N, 1, 8, 8)
    truth = np.load(prepared / "test" / "labels.npy")
    out = workdir / "test_split"
    for i, image in enumerate(pixels):
        out.mkdir(exist_ok=True)
        Image.fromarray(image[0]).save(out / f"{i:04d}.png")
    rows = predict_rows(workdir, cache_dir, run_dir, out)
    assert len(rows) == len(truth) == eval_metrics["num_examples"]
    accuracy = np.mean([row["label"] == names[t] for row, t in zip(rows, truth, strict=True)])
    assert accuracy == pytest.approx(eval_metrics["accuracy"], abs=1e-9)
    assert len({row["label"] for row in rows}) >= 3  # not one class for all: a real check


def test_masked_image_model_is_refused(folder, workdir, cache_dir) -> None:
    with cli_env(cache_dir, workdir):
        result = run_cli(
            "train", "vit-mim-digits", *VIT_TINY, "train.max_steps=2", "train.eval_every=2",
            "train.run_dir=runs/mim", "--json",
        )  # fmt: skip
        assert result.code == 0, result.err
        result = run_cli("predict", workdir / "runs" / "mim", folder, "--json")
    assert result.code == 2
    assert "classification model" in result.json()["message"]
    assert "vit/mim" in result.json()["message"]
