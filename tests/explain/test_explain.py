"""`ftc explain` through the real CLI on a tiny demo spam model and a tiny ViT (trained
once per module): the jsonl/html/--json outputs and their shapes, per-word scores summed
from sub-tokens, IG's completeness, rollout, stdin, --target, the inputs it accepts (run
dir, best/, a checkpoint, the hf export) and refuses (exit 2), and eval.explain.

The figures of issue 16 (spam indicators in the top words, stroke share on digits) need
better-trained models: tests/explain/test_explain_slow.py."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, cli_env, run_cli
from tests.vision.conftest import VIT_TINY, digits

TEXTS = [
    "Congratulations! You have WON a free cruise, click here now to claim your prize.",
    "Hi Bob, the build of the kernel module fails with gcc 3.2; patch attached.",
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explain")


@pytest.fixture(scope="module")
def spam_run(workdir: Path, cache_dir: Path) -> Path:
    """A tiny demo run that keeps its checkpoints and explains 2 misclassified examples
    when evaluated (eval.explain)."""
    args = [*TINY, "train.save_every=6", "eval.explain=2", "train.run_dir=runs/spam"]
    with cli_env(cache_dir, workdir):
        result = run_cli("train", "demo", *args, "--json")
    assert result.code == 0, result.err
    return workdir / "runs" / "spam"


@pytest.fixture(scope="module")
def texts(workdir: Path) -> Path:
    path = workdir / "texts.txt"
    path.write_text("".join(t + "\n" for t in TEXTS))
    return path


def assert_baseline_warning_iff_alike(rows: list[dict], err: str) -> None:
    """The baseline warning is printed exactly when some input's content-free baseline
    gets its class within 0.05 of the input (or above it)."""
    alike = [r for r in rows if r["f_input"] - r["f_baseline"] < 0.05]
    assert ("baseline (no content) gets p(" in err) == bool(alike), err


def explain(workdir: Path, cache_dir: Path, *args: str | Path, stdin: bytes | None = None):
    with cli_env(cache_dir, workdir):
        return run_cli("explain", *args, stdin=stdin)


def test_text_outputs_json_and_completeness(
    spam_run: Path, texts: Path, workdir: Path, cache_dir: Path
) -> None:
    out = workdir / "why"
    result = explain(workdir, cache_dir, spam_run, texts, "--out", out, "--json")
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["status"] == "ok" and payload["command"] == "explain"
    assert payload["run_dir"] == str(spam_run) and payload["count"] == len(TEXTS)
    assert (payload["method"], payload["baseline"], payload["steps"]) == ("ig", "pad", 50)
    assert payload["outputs"] == {
        "jsonl": str(out / "explanations.jsonl"),
        "html": str(out / "explanations.html"),
    }
    rows = read_jsonl(out / "explanations.jsonl")
    assert [r["id"] for r in rows] == [e["id"] for e in payload["explanations"]] == [0, 1]
    for row, entry, text in zip(rows, payload["explanations"], TEXTS, strict=True):
        assert row["label"] in ("ham", "spam") and row["target"] == row["label"]
        assert row["prob"] == pytest.approx(max(row["probs"].values()), abs=1e-6)
        assert row["prob"] == pytest.approx(row["f_input"], abs=1e-5)  # F: target's prob
        assert entry["top"] == row["top"] and len(row["top"]) == 5
        # top: the best-scoring distinct words, each at its best occurrence, best first
        best: dict[str, float] = {}
        for w in row["words"]:
            best[w["word"].casefold()] = max(best.get(w["word"].casefold(), -1e9), w["score"])
        assert [(t["word"].casefold(), t["score"]) for t in row["top"]] == sorted(
            best.items(), key=lambda kv: -kv[1]
        )[:5]
        assert "tokens" not in entry  # --json carries the summary; jsonl the detail
        # Each word is its span of the input, its score the sum of its sub-tokens'.
        assert " ".join(w["word"] for w in row["words"]).lower().replace(" ", "") == re.sub(
            r"\s", "", text.lower()
        )
        for i, word in enumerate(row["words"]):
            assert text[word["start"] : word["end"]] == word["word"]
            parts = [t["score"] for t in row["tokens"] if t["word"] == i]
            assert word["score"] == pytest.approx(sum(parts), abs=1e-5)
        assert [t["score"] for t in row["tokens"] if t["word"] is None] == [0.0, 0.0]
        # Completeness: the scores add up to p(input) - p(baseline) up to the delta.
        total = sum(t["score"] for t in row["tokens"])
        change = row["f_input"] - row["f_baseline"]
        assert total - change == pytest.approx(row["convergence_delta"], abs=1e-4)
        assert abs(row["convergence_delta"]) <= 0.05 * abs(change) + 1e-6
    # A model that gives the blank baseline the input's class as surely: said in one line.
    assert_baseline_warning_iff_alike(rows, result.err)
    # Without its top words (each occurrence's tokens -> [PAD], as the baseline blanks
    # content), transformers' own model on best/ gives p(target) = target_prob_without_top.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(spam_run / "best").eval()
    tok = AutoTokenizer.from_pretrained(spam_run / "best")
    for row, entry in zip(rows, payload["explanations"], strict=True):
        top = {t["word"].casefold() for t in row["top"]}
        ids = [
            tok.pad_token_id
            if t["word"] is not None and row["words"][t["word"]]["word"].casefold() in top
            else tok.convert_tokens_to_ids(t["token"])
            for t in row["tokens"]
        ]
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([ids])).logits[0]
        p = float(torch.softmax(logits, dim=-1)[hf.config.label2id[row["target"]]])
        assert row["target_prob_without_top"] == pytest.approx(p, abs=1e-5)
        assert entry["target_prob_without_top"] == row["target_prob_without_top"]
    page = (out / "explanations.html").read_text()
    assert page.count(" without its top 5: ") == len(TEXTS)
    assert page.count('class="example"') == len(TEXTS)
    assert "background:rgba(" in page and "cruise" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # self-contained


def test_stdin_target_and_rollout(spam_run: Path, workdir: Path, cache_dir: Path) -> None:
    stdin = (TEXTS[0] + "\n").encode()
    out = workdir / "stdin"
    result = explain(
        workdir, cache_dir, spam_run, "-", "--target", "ham", "--out", out, "--json", stdin=stdin
    )
    assert result.code == 0, result.err
    (entry,) = result.json()["explanations"]
    assert entry["target"] == "ham"
    result = explain(
        workdir, cache_dir, spam_run / "best", "-", "--method", "rollout", "--out", out,
        "--json", stdin=stdin,
    )  # fmt: skip
    assert result.code == 0, result.err
    payload = result.json()
    assert (payload["method"], payload["baseline"], payload["steps"]) == ("rollout", None, None)
    (row,) = read_jsonl(out / "explanations.jsonl")
    assert "convergence_delta" not in row
    # The [CLS] row of the rollout: a share of attention flow per token, summing to 1.
    assert sum(t["score"] for t in row["tokens"]) == pytest.approx(1.0, abs=1e-4)
    assert all(t["score"] >= 0 for t in row["tokens"])


def test_checkpoint_and_hf_export_explain_like_best(
    spam_run: Path, texts: Path, workdir: Path, cache_dir: Path
) -> None:
    """best/ is the last checkpoint here (12 steps, f1 rises): same model, same scores."""
    with cli_env(cache_dir, workdir):
        exported = run_cli("export", spam_run, "--format", "hf", "export.latency_runs=0")
    assert exported.code == 0, exported.err
    tops = []
    for model_dir in (spam_run / "best", spam_run / "checkpoints" / "step-000012",
                      spam_run / "export" / "hf"):  # fmt: skip
        out = workdir / f"same-{model_dir.name}"
        result = explain(workdir, cache_dir, model_dir, texts, "--out", out, "--json")
        assert result.code == 0, f"{model_dir}: {result.err}"
        tops.append([(e["label"], e["top"]) for e in result.json()["explanations"]])
    best = read_jsonl(workdir / "same-best" / "explanations.jsonl")
    step = read_jsonl(workdir / "same-step-000012" / "explanations.jsonl")
    if best[0]["prob"] == step[0]["prob"]:  # best/ is that checkpoint
        assert tops[0] == tops[1]
    assert tops[0] == tops[2]


def test_refusals_exit_2(
    spam_run: Path, texts: Path, workdir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = explain(workdir, cache_dir, spam_run, texts, "--target", "eggs", "--json")
    assert result.code == 2, result.err
    assert result.json()["message"] == (
        "--target 'eggs': not a label of this model (labels: ham, spam)"
    )
    for flag, value in (("--method", "lime"), ("--baseline", "noise"), ("--steps", "0")):
        result = explain(workdir, cache_dir, spam_run, texts, flag, value, "--json")
        assert result.code == 2 and flag in result.json()["message"], result.err
    # An onnx (or pt2, int8) export has no torch module to take gradients through.
    fake = workdir / "onnx-like"
    shutil.copytree(spam_run / "best", fake, dirs_exist_ok=True)
    manifest = json.loads((fake / "manifest.json").read_text())
    (fake / "manifest.json").write_text(json.dumps({**manifest, "format": "onnx"}))
    result = explain(workdir, cache_dir, fake, texts, "--json")
    assert result.code == 2 and "a onnx export" in result.json()["message"], result.err
    # No captum: exit 2 with the pip line, nothing written.
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    out = workdir / "no-captum"
    result = explain(workdir, cache_dir, spam_run, texts, "--out", out, "--json")
    assert result.code == 2, result.err
    assert result.json()["message"].endswith("pip install 'fine_tune_cli[explain]'")
    assert not out.exists()


def test_a_non_classifier_exits_2(workdir: Path, cache_dir: Path, texts: Path) -> None:
    args = [*TINY, "model.task=mlm", "train.max_steps=2", "train.eval_every=2"]
    args += ["train.best_metric=loss", "data.source.limit=100"]
    with cli_env(cache_dir, workdir):
        trained = run_cli("train", "demo", *args, "train.run_dir=runs/mlm")
    assert trained.code == 0, trained.err
    result = explain(workdir, cache_dir, workdir / "runs" / "mlm", texts, "--json")
    assert result.code == 2, result.err
    message = result.json()["message"]
    assert "explains text and image classifiers (this model is bert/mlm)" in message


def test_eval_explains_misclassified_examples(spam_run: Path, workdir: Path, cache_dir: Path):
    with cli_env(cache_dir, workdir):
        result = run_cli("eval", spam_run, "--split", "test", "--json")
    assert result.code == 0, result.err
    outputs = result.json()["outputs"]
    rows = read_jsonl(Path(outputs["explanations_jsonl"]))
    metrics = json.loads((spam_run / "eval" / "test" / "metrics.json").read_text())
    wrong = sum(sum(r) - r[i] for i, r in enumerate(metrics["confusion_matrix"]))
    assert len(rows) == min(2, wrong)
    for row in rows:
        assert row["true"] != row["label"] == row["target"] and row["method"] == "ig"
    assert Path(outputs["explanations_html"]).is_file()


# --------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def vit_run(workdir: Path, cache_dir: Path) -> Path:
    with cli_env(cache_dir, workdir):
        result = run_cli("train", "vit-digits", *VIT_TINY, "train.run_dir=runs/vit")
    assert result.code == 0, result.err
    return workdir / "runs" / "vit"


def test_images_patch_grid_heat_map_and_rollout(
    vit_run: Path, workdir: Path, cache_dir: Path
) -> None:
    folder = workdir / "digits"
    folder.mkdir()
    images, _ = digits(3, classes=10)
    for i, array in enumerate(images):
        Image.fromarray(array).save(folder / f"{i}.png")
    out = workdir / "why-digits"
    result = explain(workdir, cache_dir, vit_run, folder, "--out", out, "--json")
    assert result.code == 0, result.err
    rows = read_jsonl(out / "explanations.jsonl")
    assert [r["id"] for r in rows] == ["0.png", "1.png", "2.png"]
    for row, image in zip(rows, images, strict=True):
        grid = np.array(row["grid"])
        assert grid.shape == (4, 4) and row["patch_size"] == 2  # 8x8 digits, patch 2
        total, change = grid.sum(), row["f_input"] - row["f_baseline"]
        assert total - change == pytest.approx(row["convergence_delta"], abs=1e-4)
        # Completeness within 5% (steps raised 4x at a time, up to 16x, until it holds),
        # unless the change itself is float noise.
        assert row["steps"] in (50, 200, 800)
        off = abs(row["convergence_delta"])
        assert off <= 0.05 * abs(change) or off <= 1e-4 or row["steps"] == 800
        # A black patch is the black baseline itself: IG gives it nothing.
        blank = image.reshape(4, 2, 4, 2).max(axis=(1, 3)) == 0
        assert np.all(grid[blank] == 0)
        assert row["top"][0]["score"] == grid.max()
    assert_baseline_warning_iff_alike(rows, result.err)
    assert all(0 <= r["target_prob_without_top"] <= 1 for r in rows)
    page = (out / "explanations.html").read_text()
    assert page.count("data:image/png;base64,") == 2 * len(rows)
    assert page.count(" without its top 5: ") == len(rows)
    result = explain(workdir, cache_dir, vit_run, folder / "0.png", "--method", "rollout",
                     "--out", out, "--json")  # fmt: skip
    assert result.code == 0, result.err
    (row,) = read_jsonl(out / "explanations.jsonl")
    assert np.array(row["grid"]).sum() <= 1.0 + 1e-6  # the class token keeps a share


def test_the_baseline_warning_names_each_class_the_model_gives_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both sides of the line: rows whose baseline gets the predicted class within 0.05 of
    the input (or above it) are counted per class; a real change, or a --target class the
    model gives ~0 with and without content, says nothing."""
    from fine_tune_cli.explain.run import _warn_baseline_scores_alike

    rows = [
        {"label": "spam", "target": "spam", "f_input": 0.98, "f_baseline": 0.97},
        {"label": "spam", "target": "spam", "f_input": 0.90, "f_baseline": 0.99},
        {"label": "spam", "target": "spam", "f_input": 0.95, "f_baseline": 0.10},
        {"label": "ham", "target": "ham", "f_input": 0.80, "f_baseline": 0.20},
        {"label": "spam", "target": "ham", "f_input": 0.01, "f_baseline": 0.01},  # --target
        {"label": "ham", "target": "ham", "f_input": 0.70},  # rollout: no baseline
    ]
    with caplog.at_level("WARNING", logger="ftc"):
        _warn_baseline_scores_alike(rows, "pad")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "for 2 of 6 input(s) the pad baseline (no content) gets p(spam) 0.980" in line
    caplog.clear()
    with caplog.at_level("WARNING", logger="ftc"):
        _warn_baseline_scores_alike(rows[2:], "pad")
    assert caplog.records == []
