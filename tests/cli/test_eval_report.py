"""`ftc eval` on a tiny demo run: the report's header block, its plots (at most 4 series
each, the reliability diagram beside the ECE figure), the validation history table,
`--compare` as a side-by-side table, and the classic baseline checked against
scikit-learn fitted directly on the run's prepared train split.

Two tiny demo runs are trained once per module (different lengths, so their metrics
differ); the second sets `eval.baseline=false`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TINY, cli_env, run_cli
from tests.unit.test_report_browser import ReportPage, run_chromium

MAX_SERIES = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("eval-report")
    with cli_env(cache_dir, base):
        a = run_cli("train", "demo", *TINY)
        assert a.code == 0, a.err
        b = run_cli(
            "train",
            "demo",
            *TINY,
            "train.max_steps=6",
            "train.run_dir=runs/demo-short",
            "eval.baseline=false",
        )
        assert b.code == 0, b.err
        this, other = base / "runs" / "demo", base / "runs" / "demo-short"
        evaluated = run_cli("eval", this, "--compare", other, "--json")
        assert evaluated.code == 0, evaluated.err
        # the other way round, as a person reads it (and the run without a baseline)
        human = run_cli("eval", other, "--compare", this)
        assert human.code == 0, human.err
    payload = evaluated.json()
    out = Path(payload["outputs"]["report_html"]).parent
    return {
        "run": this,
        "payload": payload,
        "human": human.out,
        "short": json.loads(
            (other / "eval" / payload["split"] / "metrics.json").read_text(encoding="utf-8")
        ),
        "out": out,
        "page": ReportPage((out / "report.html").read_text(encoding="utf-8")),
        "metrics": json.loads((out / "metrics.json").read_text()),
        "prepared": Path(json.loads((this / "provenance.json").read_text())["data"]["path"]),
    }


# --------------------------------------------------------------------------- header


def test_header_block_tells_the_whole_run(runs: dict[str, Any]) -> None:
    import torch
    import transformers
    from safetensors import safe_open

    run, page = runs["run"], runs["page"]
    header = dict(page.rows("Run"))
    assert header["recipe"] == "demo"
    assert header["model"].startswith("bert tiny")
    with safe_open(str(run / "best" / "model.safetensors"), "np") as f:
        params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118
    assert header["parameters"].startswith(f"{params:,} ")

    manifest = json.loads((runs["prepared"] / "manifest.json").read_text())
    splits = manifest["splits"]
    assert header["data (examples)"] == " · ".join(
        f"{name} {splits[name]['examples']:,}" for name in ("train", "validation", "test")
    )
    data = page.tables["Data"]
    assert data[0] == ["class", "train", "validation", "test"]
    for label, *counts in data[1:-1]:
        assert [int(c) for c in counts] == [
            splits[s]["label_counts"][label] for s in ("train", "validation", "test")
        ]
    assert data[-1][0] == "total"

    provenance = json.loads((run / "provenance.json").read_text())
    assert header["steps"] == str(provenance["summary"]["steps"]) == "12"
    assert header["wall time"].endswith("s")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key, label in (("samples_per_s", "samples/s"), ("tokens_per_s", "tokens/s")):
        median = statistics.median(e[key] for e in history if key in e and "split" not in e)
        shown = float(header[label].split(" ")[0].replace(",", ""))
        assert shown == pytest.approx(median, abs=0.051), label
    assert header["device"].startswith("cpu")
    assert f"torch {torch.__version__}" in header["versions"]
    assert f"transformers {transformers.__version__}" in header["versions"]


def test_plots_have_at_most_four_series(runs: dict[str, Any]) -> None:
    """Curves show only train/validation loss and the validation best metric; every
    other validation figure is in the history table, one row per evaluation."""
    source = (runs["out"] / "report.html").read_text(encoding="utf-8")
    counts = [int(n) for n in _attr_values(source, "data-series")]
    assert counts and all(n <= MAX_SERIES for n in counts), counts
    caption = next(
        c for c in _figcaptions(source) if c.startswith("Training curves (training_curves.png)")
    )
    assert caption.endswith("Series: train loss, validation loss, validation f1_macro.")

    history = [json.loads(x) for x in (runs["run"] / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in history if e.get("split") == "validation"]
    header, *rows = runs["page"].tables["Validation history"]
    assert len(rows) == len(evals)
    for name in ("accuracy", "precision_macro", "recall_weighted", "ece", "loss"):
        column = header.index(name)
        assert [float(r[column]) for r in rows] == pytest.approx(
            [e[f"eval_{name}"] for e in evals], abs=5e-5
        )
    best = json.loads((runs["run"] / "provenance.json").read_text())["summary"]["best_step"]
    assert [r[0] for r in rows].count(f"{best} (best)") == 1


def test_reliability_diagram_beside_the_ece_figure(runs: dict[str, Any]) -> None:
    metrics, page = runs["metrics"], runs["page"]
    bins = metrics["reliability"]
    assert sum(b["count"] for b in bins) == metrics["num_examples"]
    ece = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert ece / metrics["num_examples"] == pytest.approx(metrics["ece"], abs=1e-12)
    assert page.rows("Calibration") == [["ece", f"{metrics['ece']:.4f}"]]
    source = (runs["out"] / "report.html").read_text(encoding="utf-8")
    calibration = source.split('<section id="calibration">', 1)[1].split("</section>", 1)[0]
    assert 'alt="Reliability"' in calibration  # the diagram sits in the ECE's section
    assert (runs["out"] / "reliability.png").read_bytes().startswith(b"\x89PNG")


# --------------------------------------------------------------------------- compare


def test_compare_is_a_side_by_side_table(runs: dict[str, Any]) -> None:
    p = runs["payload"]
    block, flat = p["compare"], p["metrics"]
    table = block["table"]
    assert {"accuracy", "f1_macro", "loss", "ece"} <= set(table)
    assert "baseline_accuracy" not in table  # the other run's eval fits none
    differ = 0
    for name, entry in table.items():
        assert entry["this"] == flat[name] and entry["other"] == block["metrics"][name]
        assert entry["delta"] == pytest.approx(entry["this"] - entry["other"])
        if name in ("num_examples", "majority_baseline") or entry["this"] == entry["other"]:
            assert entry["better"] is None, name
            continue
        differ += 1
        lower = name in ("loss", "ece", "perplexity")
        expected = "this" if (entry["this"] < entry["other"]) == lower else "other"
        assert entry["better"] == expected, name
    assert differ >= 2  # the two runs differ, so the marks are exercised
    assert table["loss"]["this"] != table["loss"]["other"]

    rows = {r[0]: r for r in runs["page"].rows("Comparison")}
    assert rows["loss"][1:4] == [
        f"{table['loss']['this']:.4f}",
        f"{table['loss']['other']:.4f}",
        f"{table['loss']['delta']:+.4f}",
    ]
    assert rows["loss"][4] == {"this": "this run", "other": "other run"}[table["loss"]["better"]]

    lines = runs["human"].splitlines()
    header = ["metric", "this", "run", "other", "run", "delta", "better"]
    assert any(line.split() == header for line in lines)
    loss_line = next(line.split() for line in lines if line.split()[:1] == ["loss"])
    # the same two models the other way round: values swap, the delta flips sign
    assert loss_line[1:3] == rows["loss"][2:0:-1]
    assert float(loss_line[3]) == pytest.approx(-table["loss"]["delta"], abs=1e-4)
    assert loss_line[4:] == [{"this": "other", "other": "this"}[table["loss"]["better"]]]


# --------------------------------------------------------------------------- baseline


def _split_texts(prepared: Path, split: str) -> tuple[list[str], np.ndarray]:
    texts = [json.loads(x)["text"] for x in (prepared / split / "texts.jsonl").open()]
    return texts, np.load(prepared / split / "labels.npy")


def test_baseline_matches_scikit_learn_on_the_same_split(runs: dict[str, Any]) -> None:
    """TF-IDF (1-2 grams) + logistic regression fitted here on the run's prepared train
    texts and scored on its test split gives exactly the figures eval reported."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    x_train, y_train = _split_texts(runs["prepared"], "train")
    x_test, y_test = _split_texts(runs["prepared"], "test")
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(max_iter=1000))
    pred = model.fit(x_train, y_train).predict(x_test)
    flat = runs["payload"]["metrics"]
    assert runs["payload"]["split"] == "test"
    assert flat["baseline_accuracy"] == pytest.approx(accuracy_score(y_test, pred), abs=1e-12)
    assert flat["baseline_f1_macro"] == pytest.approx(
        f1_score(y_test, pred, average="macro"), abs=1e-12
    )
    info = runs["metrics"]["baseline"]
    assert info["train_rows"] == info["train_rows_total"] == len(y_train)
    baseline_rows = {r[0]: r for r in runs["page"].rows("Baseline")}
    assert baseline_rows["this model"][1] == f"{flat['accuracy']:.4f}"
    assert baseline_rows[info["model"]][1:] == [
        f"{flat['baseline_accuracy']:.4f}",
        f"{flat['baseline_f1_macro']:.4f}",
    ]


def test_eval_baseline_false_skips_it(runs: dict[str, Any]) -> None:
    short = runs["short"]  # metrics.json of the run trained with eval.baseline=false
    assert "accuracy" in short
    assert not {"baseline_accuracy", "baseline_f1_macro", "baseline"} & set(short)
    assert "baseline_accuracy" in runs["metrics"]


def test_train_subsample_is_seeded_and_bounded() -> None:
    from fine_tune_cli.evaluation.baseline import MAX_TRAIN_ROWS, train_subsample

    assert list(train_subsample(10, seed=0)) == list(range(10))
    rows = train_subsample(MAX_TRAIN_ROWS + 7_000, seed=3)
    assert len(rows) == len(set(rows.tolist())) == MAX_TRAIN_ROWS
    assert np.all(np.diff(rows) > 0) and rows[-1] < MAX_TRAIN_ROWS + 7_000
    assert np.array_equal(rows, train_subsample(MAX_TRAIN_ROWS + 7_000, seed=3))
    assert not np.array_equal(rows, train_subsample(MAX_TRAIN_ROWS + 7_000, seed=4))


def test_pixel_features_block_average_large_images() -> None:
    from fine_tune_cli.evaluation.baseline import pixel_features

    small = np.arange(2 * 1 * 8 * 8, dtype=np.uint8).reshape(2, 1, 8, 8)
    assert np.allclose(pixel_features(small), small.reshape(2, -1) / 255.0)
    big = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    features = pixel_features(big)
    assert features.shape == (1, 3 * 32 * 32)
    expected = big.astype(np.float32).reshape(1, 3, 32, 2, 32, 2).mean(axis=(3, 5)) / 255.0
    assert np.allclose(features, expected.reshape(1, -1), atol=1e-6)


# --------------------------------------------------------------------------- chromium


@pytest.fixture(scope="module")
def chromium() -> str:
    import shutil

    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")


def test_header_renders_in_chromium(runs: dict[str, Any], chromium: str, tmp_path: Path) -> None:
    """Chromium's DOM holds the header block and the plots' series counts, and a
    screenshot of the top of the page is not blank."""
    from PIL import Image

    html = runs["out"] / "report.html"
    dom = run_chromium(chromium, tmp_path / "p1", "--dump-dom", html.as_uri()).stdout.decode()
    page = ReportPage(dom)
    assert dict(page.rows("Run"))["recipe"] == "demo"
    assert all(int(n) <= MAX_SERIES for n in _attr_values(dom, "data-series"))
    shot = tmp_path / "top.png"
    run_chromium(
        chromium,
        tmp_path / "p2",
        f"--screenshot={shot}",
        "--window-size=1200,900",
        "--hide-scrollbars",
        html.as_uri(),
    )
    with Image.open(shot) as image:
        gray = image.convert("L")
        assert len(set(gray.getdata())) > 20 and gray.getextrema()[0] < 100


def _attr_values(source: str, attr: str) -> list[str]:
    import re

    return re.findall(rf'{attr}="([^"]*)"', source)


def _figcaptions(source: str) -> list[str]:
    import html
    import re

    return [html.unescape(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", source)]
