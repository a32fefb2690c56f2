"""`ftc export --format onnx|pt2|int8|pruned` and `ftc predict` end to end through
the real CLI on a tiny BERT trained once (tests/export/conftest.py): each format passes
its parity gate and writes its figures and sha256s into the manifest; a failed gate
publishes nothing; predict gives the HF model's labels with every format, reads files and stdin,
and refuses a tampered model (exit 6)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli_env, run_cli
from tests.export.conftest import FAST, FORMATS, raw_rows, read_jsonl


# --------------------------------------------------------------------------- helpers
def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def inputs(workdir: Path) -> Path:
    path = workdir / "new_emails.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw_rows(24)))
    return path


@pytest.fixture(scope="module")
def hf_predictions(exports, inputs: Path, workdir: Path, cache_dir: Path) -> list[dict]:
    with cli_env(cache_dir, workdir):
        result = run_cli("predict", exports["hf"][1], inputs, "--out", "-")
    assert result.code == 0, result.err
    return read_jsonl(result.out)


# --------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_passes_parity_and_records_figures(exports, fmt: str) -> None:
    result, out = exports[fmt]
    p = result.json()
    assert p["status"] == "ok" and p["format"] == fmt
    assert Path(p["outputs"]["dir"]) == out and not list(out.parent.glob(".tmp-*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == fmt and manifest["labels"] == ["ham", "spam"]
    assert manifest["artefact"]["file"] in manifest["files"]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    for rel, entry in manifest["files"].items():
        assert len(entry["sha256"]) == 64 and (out / rel).stat().st_size == entry["bytes"]
    parity = manifest["parity"]
    assert parity["passed"] is True and parity["samples"] > 0
    assert parity["metric"] == "accuracy" and parity["split"] == "validation"
    for key in ("max_abs_diff", "mean_abs_diff", "prediction_agreement", "metric_drop"):
        assert isinstance(parity[key], float), key
    assert 0 <= parity["metric_torch"] <= 1 and 0 <= parity["metric_export"] <= 1
    assert parity["metric_drop"] <= manifest["tolerances"]["max_metric_drop"]
    lat = manifest["latency"]
    assert lat["runs"] == 3 and lat["torch_ms"] > 0 and lat["export_ms"] > 0
    assert manifest["sizes"]["export_bytes"] > 0 and manifest["sizes"]["torch_bytes"] > 0
    assert p["parity"] == parity and p["latency"] == lat  # --json carries the same figures
    assert manifest["recipe"]["name"] == "demo"


def test_exact_formats_reproduce_the_torch_logits(exports) -> None:
    for fmt in ("hf", "onnx", "pt2"):
        manifest = json.loads((exports[fmt][1] / "manifest.json").read_text())
        assert manifest["tolerances"] == {"max_abs_diff": 1e-3, "max_metric_drop": 0.01}
        assert manifest["parity"]["max_abs_diff"] <= 1e-4, fmt
        assert manifest["parity"]["prediction_agreement"] == 1.0, fmt


def test_onnx_runs_in_onnxruntime_with_dynamic_axes(exports) -> None:
    import onnx
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = exports["onnx"][1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artefact"]["opset"] == 18
    model = onnx.load(str(out / "model.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    tok = AutoTokenizer.from_pretrained(str(out))
    hf = AutoModelForSequenceClassification.from_pretrained(str(exports["hf"][1])).eval()
    for texts in (["win a prize now"], ["a", "much longer text " * 8, "hello there"]):
        enc = tok(texts, padding=True, return_tensors="np")  # other batch and sequence sizes
        (got,) = session.run(None, {k: enc[k] for k in ("input_ids", "attention_mask")})
        with torch.inference_mode():
            ref = hf(**{k: torch.from_numpy(enc[k]) for k in ("input_ids", "attention_mask")})
        assert got.shape == (len(texts), 2)
        assert np.abs(got - ref.logits.numpy()).max() < 1e-4


def test_pt2_loads_in_plain_torch_with_dynamic_batch_and_sequence(exports) -> None:
    """torch.export.load alone (no fine_tune_cli import) runs model.pt2 on batch and
    sequence sizes other than the export example's, giving the HF model's logits."""
    out = exports["pt2"][1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artefact"]["runtime"] == "torch.export"
    assert {"model.pt2", "config.json"} <= set(manifest["files"])
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"m = torch.export.load({str(out / 'model.pt2')!r}).module()\n"
        f"hf = AutoModelForSequenceClassification.from_pretrained({str(out.parent / 'hf')!r})\n"
        "for shape in ((1, 5), (3, 17), (7, 2)):\n"
        "    ids = torch.randint(5, 500, shape)\n"
        "    mask = torch.ones_like(ids)\n"
        "    mask[0, shape[1] // 2 + 1:] = 0\n"
        "    (logits,) = m(ids, mask)\n"
        "    with torch.inference_mode():\n"
        "        ref = hf(input_ids=ids, attention_mask=mask).logits\n"
        "    assert tuple(logits.shape) == (shape[0], 2), logits.shape\n"
        "    assert (logits - ref).abs().max() < 1e-4\n"
        "assert not any(n.startswith('fine_tune_cli') for n in sys.modules)\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_torchscript_is_a_deprecated_alias_of_pt2(ftc, run_dir: Path) -> None:
    result = ftc("export", run_dir, "--format", "torchscript", *FAST, "--json")
    assert result.code == 0, result.err
    assert "--format torchscript is deprecated" in result.err and "pt2" in result.err
    p = result.json()
    out = run_dir / "export" / "torchscript"  # the name asked for: scripts' paths still work
    assert p["format"] == "pt2" and Path(p["outputs"]["dir"]) == out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "pt2" and manifest["artefact"]["file"] == "model.pt2"
    assert not list(out.glob("*.pt"))  # no TorchScript archive any more


def test_old_torchscript_export_is_refused_naming_the_fix(ftc, exports, tmp_path: Path) -> None:
    from fine_tune_cli.manifest import write_manifest

    """A dir `ftc export --format torchscript` wrote before pt2 (format "torchscript" in
    its manifest) is refused with the re-export command, not "unknown format"."""
    old = shutil.copytree(exports["pt2"][1], tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").unlink()
    kept = {k: v for k, v in manifest.items() if k not in ("files", "format_version")}
    write_manifest(old, **(kept | {"format": "torchscript"}))
    (tmp_path / "in.txt").write_text("win money now\n")
    result = ftc("predict", old, tmp_path / "in.txt", "--json")
    assert result.code == 2, result.err
    message = result.json()["message"]
    assert "TorchScript export" in message and "--format pt2" in message


def test_int8_is_smaller_and_gated_on_its_own_tolerances(exports) -> None:
    out = exports["int8"][1]
    manifest = json.loads((out / "manifest.json").read_text())
    art = manifest["artefact"]
    assert art["int8_bytes"] < art["fp32_bytes"] and art["size_ratio"] > 1.5
    assert manifest["files"]["model.onnx"]["bytes"] == art["int8_bytes"]
    assert manifest["tolerances"] == {
        "max_abs_diff": 0.25,
        "min_agreement": 0.99,
        "max_metric_drop": 0.01,
    }
    assert manifest["parity"]["prediction_agreement"] >= 0.99


def test_pruned_has_the_requested_sparsity(exports) -> None:
    from safetensors.numpy import load_file

    out = exports["pruned"][1]
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "sparsity.json").read_text())
    assert "sparsity.json" in manifest["files"]
    assert manifest["tolerances"] == {"max_metric_drop": 0.01}  # logits change on purpose
    assert report["scope"] == "global" and report["recovery"] is None
    assert report["sparsity_pruned_layers"] == pytest.approx(0.5, abs=0.01)
    weights = load_file(str(out / "model.safetensors"))
    query = next(v for k, v in weights.items() if k.endswith("attention.self.query.weight"))
    assert (query == 0).mean() > 0.1  # zeros are in the saved weights (prune.remove)
    head = next(v for k, v in weights.items() if k.endswith("classifier.weight"))
    assert (head == 0).mean() == 0  # the task head stays dense
    assert not any(k.endswith(("_orig", "_mask")) for k in weights)


def test_pruned_per_layer_with_recovery(ftc, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    result = ftc(
        "export", run_dir, "--format", "pruned", "--out", out, *FAST,
        "export.prune_scope=layer", "export.prune_sparsity=0.3",
        "export.prune_recovery_steps=3", "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    pruning = result.json()["artefact"]["pruning"]
    assert pruning["scope"] == "layer" and pruning["recovery"]["steps"] == 3
    report = json.loads((out / "sparsity.json").read_text())
    for name, layer in report["per_layer"].items():
        assert layer["sparsity"] == pytest.approx(0.3, abs=0.01), name


def test_failed_gate_exits_5_and_publishes_nothing(ftc, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    result = ftc(
        "export", run_dir, "--format", "int8", "--out", out, *FAST,
        "export.int8_max_abs_diff=0", "--json",
    )  # fmt: skip
    assert result.code == 5, result.err
    p = result.json()
    assert p["status"] == "gate_failed" and p["exit_code"] == 5
    assert "export.int8_max_abs_diff" in p["message"] and "nothing written" in p["message"]
    assert p["parity"]["passed"] is False and p["parity"]["max_abs_diff"] > 0
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_unknown_format_exits_2(ftc, run_dir: Path, tmp_path: Path) -> None:
    result = ftc("export", run_dir, "--format", "onxx", "--out", tmp_path / "x", "--json")
    assert result.code == 2
    assert "did you mean 'onnx'" in result.json()["message"]


def test_override_the_format_does_not_read_exits_2(ftc, run_dir: Path, tmp_path: Path) -> None:
    # int8 has its own logit bound: export.max_abs_diff would be silently ignored.
    out = tmp_path / "x"
    result = ftc("export", run_dir, "--format", "int8", "--out", out, "export.max_abs_diff=0")
    assert result.code == 2
    assert "export.max_abs_diff does not apply to --format int8" in result.err
    assert "export.int8_max_abs_diff" in result.err and not out.exists()
    pruned = ftc("export", run_dir, "--format", "onnx", "--out", out, "export.prune_scope=layer")
    assert pruned.code == 2 and "export.prune_scope" in pruned.err


# --------------------------------------------------------------------------- predict
@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_with_each_format_matches_hf(
    ftc, exports, inputs: Path, hf_predictions: list[dict], tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "preds.jsonl"
    result = ftc("predict", exports[fmt][1], inputs, "--out", out, "--json")
    assert result.code == 0, result.err
    p = result.json()
    assert p["status"] == "ok" and p["format"] == fmt and p["count"] == 24
    assert p["outputs"]["predictions"] == str(out)
    rows = read_jsonl(out.read_text())
    assert [r["id"] for r in rows] == list(range(24))
    assert [r["label"] for r in rows] == [r["label"] for r in hf_predictions]
    for row in rows:
        assert set(row["probs"]) == {"ham", "spam"}
        assert sum(row["probs"].values()) == pytest.approx(1, abs=1e-5)
        assert row["score"] == max(row["probs"].values())
    assert sum(p["label_counts"].values()) == 24


def test_predict_default_out_and_run_dir(ftc, exports, run_dir: Path, inputs: Path) -> None:
    result = ftc("predict", run_dir, inputs)  # a run dir: uses best/
    assert result.code == 0, result.err
    assert "predictions.jsonl" in result.out
    assert len(read_jsonl(Path("predictions.jsonl").read_text())) == 24


def test_predict_stdin_text_lines_and_jsonl(exports, tmp_path: Path, cache_dir: Path) -> None:
    model = exports["onnx"][1]
    with cli_env(cache_dir, tmp_path):
        lines = run_cli("predict", model, "-", "--out", "-", stdin=b"win money now\n\nhi bob\n")
        jsonl = run_cli(
            "predict", model, "-", "--out", "-", stdin=b'{"text": "win money now", "x": 1}\n'
        )
    assert lines.code == 0, lines.err
    rows = read_jsonl(lines.out)  # stdout holds only the predictions
    assert [r["id"] for r in rows] == [0, 1]  # blank lines are skipped
    assert jsonl.code == 0, jsonl.err
    (row,) = read_jsonl(jsonl.out)
    assert row["label"] == rows[0]["label"] and row["score"] == pytest.approx(rows[0]["score"])


def test_predict_csv_and_txt_files(ftc, exports, tmp_path: Path) -> None:
    import csv

    rows = raw_rows(6)
    with open(tmp_path / "in.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject", "text"])  # no label column: labels are optional
        writer.writerows([["s", r["text"]] for r in rows])
    (tmp_path / "in.txt").write_text("free prize inside\nlunch at noon?\n")
    from_csv = ftc("predict", exports["int8"][1], tmp_path / "in.csv", "--out", "-")
    from_txt = ftc("predict", exports["int8"][1], tmp_path / "in.txt", "--out", "-")
    assert from_csv.code == 0 and len(read_jsonl(from_csv.out)) == 6, from_csv.err
    assert from_txt.code == 0 and len(read_jsonl(from_txt.out)) == 2, from_txt.err


def test_predict_keeps_rows_the_pipeline_would_drop(ftc, exports, tmp_path: Path) -> None:
    text = raw_rows(1)[0]["text"]
    (tmp_path / "dupes.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in (text, text, "x"))
    )
    result = ftc("predict", exports["hf"][1], tmp_path / "dupes.jsonl", "--out", "-")
    assert result.code == 0, result.err
    rows = read_jsonl(result.out)
    assert [r.get("filtered") for r in rows] == [None, "dedupe", "filter_length"]
    assert rows[0]["label"] == rows[1]["label"]


def test_predict_usage_and_data_errors(ftc, exports, inputs: Path, tmp_path: Path) -> None:
    model = exports["onnx"][1]
    both = ftc("predict", model, inputs, "--out", "-", "--json")
    assert both.code == 2
    assert "--json" in both.json()["message"]
    missing = ftc("predict", model, tmp_path / "nope.jsonl", "--json")
    assert missing.code == 3 and "nope.jsonl" in missing.json()["message"]
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    bad = ftc("predict", model, tmp_path / "bad.jsonl", "--json")
    assert bad.code == 3 and "'text'" in bad.json()["message"]
    no_model = ftc("predict", tmp_path / "nowhere", inputs, "--json")
    assert no_model.code == 2
    assert not (tmp_path / "predictions.jsonl").exists()


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_tampered_export_is_refused(ftc, exports, inputs: Path, tmp_path: Path, fmt: str) -> None:
    copy = shutil.copytree(exports[fmt][1], tmp_path / fmt)
    flip_byte(copy / json.loads((copy / "manifest.json").read_text())["artefact"]["file"])
    verify = ftc("verify", copy, "--json")
    assert verify.code == 6, verify.err
    predict = ftc("predict", copy, inputs, "--out", tmp_path / "p.jsonl", "--json")
    assert predict.code == 6, predict.err
    e = predict.json()
    assert e["status"] == "error" and "sha256" in e["message"]
    assert not (tmp_path / "p.jsonl").exists()


def test_tampered_tokenizer_is_refused_too(ftc, exports, inputs: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(exports["int8"][1], tmp_path / "int8")
    with open(copy / "tokenizer.json", "a") as fh:
        fh.write(" ")
    assert ftc("predict", copy, inputs, "--out", "-").code == 6


# --------------------------------------------------------------------------- unit
def test_parity_compare_leaves_the_torch_model_in_eval_mode() -> None:
    """task.evaluate restores the train flag of what it runs; through the paired wrapper
    that must not switch the torch model into train mode (dropout on, slower latency)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.export.parity import compare, latency
    from fine_tune_cli.tasks.classification import ClassificationTask

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=2,
    )  # fmt: skip
    model = BertForSequenceClassification(config).eval()
    rows = [[2, 5, 6, 3], [2, 7, 3], [2, 8, 9, 10, 3]]
    offsets = np.cumsum([0] + [len(r) for r in rows])
    split = PreparedSplit("validation", np.concatenate(rows), offsets, np.array([0, 1, 0]))
    task = ClassificationTask(pad_id=0, label_names=["a", "b"], class_weights=None)

    def run(batch):
        with torch.inference_mode():
            return {"logits": model(**batch).logits.numpy()}

    parity = compare(model, run, task, split, batch_size=2)
    assert not model.training
    assert parity["max_abs_diff"] == 0 and parity["prediction_agreement"] == 1
    assert parity["samples"] == 3 and parity["metric"] == "accuracy"
    assert latency(model, run, task, split, runs=2)["torch_ms"] > 0
    assert not model.training


def test_format_names_match_the_registry(ftc) -> None:
    """`--format` choices are listed without importing torch (fast --help, completion):
    they must stay the registry's keys, and the help shows them and ends with examples."""
    from fine_tune_cli.export import DEPRECATED_FORMATS, FORMATS
    from fine_tune_cli.export.formats import EXPORTERS

    assert sorted(FORMATS) == EXPORTERS.names()
    assert set(DEPRECATED_FORMATS.values()) <= set(FORMATS)
    export_help = ftc("export", "--help")
    assert export_help.code == 0
    assert "--format [hf|onnx|pt2|int8|pruned]" in export_help.out
    assert "ftc export [OPTIONS] RUN_DIR [KEY=VALUE]..." in export_help.out
    assert "Examples:\n    ftc export runs/demo --format onnx" in export_help.out
    predict_help = ftc("predict", "--help")
    assert "ftc predict [OPTIONS] MODEL_DIR INPUT" in predict_help.out
    assert "Examples:" in predict_help.out
