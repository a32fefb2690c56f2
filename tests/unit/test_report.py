"""Report files: present, non-empty, self-contained HTML, escaped text, atomic writes."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from fine_tune_cli.errors import OutputError
from fine_tune_cli.evaluation.metrics import classification_metrics
from fine_tune_cli.evaluation.report import write_report

LABELS = ["ham", "spam", "a|b"]
HISTORY = [
    {"step": 1, "loss": 1.2, "lr": 1e-4},
    {"step": 2, "loss": 0.9, "lr": 1e-4},
    {"step": 2, "eval_loss": 1.0, "eval_accuracy": 0.5, "eval_f1_macro": 0.4},
    {"step": 4, "loss": 0.5, "lr": 5e-5},
    {"step": 4, "eval_loss": 0.7, "eval_accuracy": 0.75, "eval_f1_macro": 0.7},
]
EXAMPLES = [
    {
        "text": "<script>alert('x')</script> pipe | here",
        "true": "ham",
        "pred": "spam",
        "score": 0.9,
    },
    {"text": "long " * 100, "true": "spam", "pred": "ham", "score": 0.6},
]


@pytest.fixture
def metrics() -> dict:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.7 + 0.1
    return classification_metrics(y, probs, LABELS, loss=0.42)


def test_all_files_written(tmp_path: Path, metrics: dict) -> None:
    out = tmp_path / "eval" / "test"
    written = write_report(
        out, metrics, title="bert-spam: test", history=HISTORY, examples=EXAMPLES
    )
    assert set(written) == {
        "metrics",
        "report_md",
        "report_html",
        "confusion_matrix_png",
        "training_curves_png",
    }
    for path in written.values():
        assert Path(path).parent == out
        assert Path(path).stat().st_size > 0
    assert Path(written["confusion_matrix_png"]).read_bytes().startswith(b"\x89PNG")
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_metrics_json_round_trips(tmp_path: Path, metrics: dict) -> None:
    written = write_report(tmp_path, metrics, title="t")
    assert json.loads(Path(written["metrics"]).read_text()) == metrics


def test_html_is_self_contained_and_escaped(tmp_path: Path, metrics: dict) -> None:
    written = write_report(tmp_path, metrics, title="<b>run</b>", examples=EXAMPLES)
    page = Path(written["report_html"]).read_text()
    png = Path(written["confusion_matrix_png"]).read_bytes()
    assert "data:image/png;base64," + base64.b64encode(png).decode() in page
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "&lt;b&gt;run&lt;/b&gt;" in page
    assert "a|b" in page  # label names appear in the confusion matrix table


def test_markdown_tables(tmp_path: Path, metrics: dict) -> None:
    written = write_report(tmp_path, metrics, title="t", examples=EXAMPLES)
    md = Path(written["report_md"]).read_text()
    assert "| accuracy | 0.6667 |" in md
    assert "| f1_macro |" in md
    assert "a\\|b" in md  # a pipe in a label name does not break the table
    assert "pipe \\| here" in md
    assert "\\<script>" in md  # not raw HTML when the markdown is rendered
    assert "long " * 30 not in md  # example text truncated to 120 characters
    assert "![Confusion matrix](confusion_matrix.png)" in md
    assert "training_curves.png" not in md  # no history given
    assert "## Per class" in md


def test_lm_metrics_without_classes(tmp_path: Path) -> None:
    written = write_report(
        tmp_path,
        {"loss": 2.0, "perplexity": 7.389, "mlm_accuracy": 0.3},
        title="mlm",
        history=[{"step": 1, "loss": 3.0}, {"step": 2, "eval_perplexity": 9.0}],
    )
    assert set(written) == {"metrics", "report_md", "report_html", "training_curves_png"}


def test_history_without_plottable_curves_skips_png(tmp_path: Path) -> None:
    written = write_report(tmp_path, {"loss": 1.0}, title="t", history=[{"step": 1, "lr": 1e-3}])
    assert "training_curves_png" not in written


def test_many_classes_plot(tmp_path: Path) -> None:
    names = [f"class-{i}" for i in range(25)]
    y = np.arange(50) % 25
    probs = np.eye(25)[(y + 1) % 25]
    written = write_report(tmp_path, classification_metrics(y, probs, names), title="t")
    assert Path(written["confusion_matrix_png"]).stat().st_size > 0


def test_unwritable_dir_raises_output_error(tmp_path: Path, metrics: dict) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="file"):
        write_report(blocker / "eval", metrics, title="t")


def test_failed_write_keeps_previous_metrics(
    tmp_path: Path, metrics: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_report(tmp_path, metrics, title="t")
    before = (tmp_path / "metrics.json").read_text()

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OutputError, match="No space left"):
        write_report(tmp_path, {"accuracy": 0.1}, title="t")
    assert (tmp_path / "metrics.json").read_text() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_dollar_signs_in_label_names_are_plotted_literally(tmp_path: Path) -> None:
    """A pair of `$` is matplotlib mathtext; `$\\x$` used to fail the whole eval."""
    from fine_tune_cli.evaluation.image_report import image_plots

    names = [r"save $\x$ now", "$a$", "cost $5"]
    y = np.array([0, 1, 2, 0])
    probs = np.eye(3)[[1, 2, 0, 0]] * 0.7 + 0.1
    written = write_report(tmp_path, classification_metrics(y, probs, names), title="t")
    assert Path(written["confusion_matrix_png"]).read_bytes().startswith(b"\x89PNG")
    pixels = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    plots = image_plots({"probs": probs, "labels": y, "pixels": pixels}, names)
    assert plots["misclassified.png"].startswith(b"\x89PNG")


def test_html_head_declares_charset_and_loads_nothing(tmp_path: Path, metrics: dict) -> None:
    page = Path(write_report(tmp_path, metrics, title="t")["report_html"]).read_text()
    head = page.split("</head>")[0]
    assert '<meta charset="utf-8">' in head
    assert "default-src &#x27;none&#x27;; img-src data:" in head  # CSP: offline, no script
    assert '<img alt="Confusion matrix" src="data:image/png;base64,' in page
