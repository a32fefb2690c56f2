"""Export dirs open in the clients people already use, without fine_tune_cli:
`transformers.pipeline` on best/ and export/hf truncates a 2,000-word text (the
tokenizer's model_max_length is the recipe's data.max_length), and the ONNX dir opened
with AutoConfig + AutoTokenizer + onnxruntime alone labels 100 unseen emails as
`ftc predict` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.export.conftest import TRAIN_ROWS, demo_rows, read_jsonl

MAX_LENGTH = 64  # TINY's data.max_length

# Runs in a fresh interpreter (-I): only transformers, onnxruntime and numpy, as a client
# that never installed fine_tune_cli would; it proves it by checking sys.modules.
ONNX_CLIENT = """
import json, sys
import numpy as np
import onnxruntime as ort
from transformers import AutoConfig, AutoTokenizer

model_dir, texts_file = sys.argv[1], sys.argv[2]
config = AutoConfig.from_pretrained(model_dir)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
session = ort.InferenceSession(model_dir + "/model.onnx", providers=["CPUExecutionProvider"])
names = [i.name for i in session.get_inputs()]
texts = json.load(open(texts_file))
rows = []
for start in range(0, len(texts), 16):
    enc = tokenizer(texts[start:start + 16], truncation=True, padding=True, return_tensors="np")
    (logits,) = session.run(["logits"], {n: enc[n] for n in names})
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    rows += [{"label": config.id2label[int(r.argmax())], "probs": r.tolist()} for r in p]
assert not any(n.startswith("fine_tune_cli") for n in sys.modules)
print(json.dumps({"rows": rows, "max_tokens": tokenizer.model_max_length}))
"""


def long_text(words: int = 2000) -> str:
    """Real email words (demo data), repeated up to `words` words."""
    pool = " ".join(r["text"] for r in demo_rows()[:50]).split()
    return " ".join(pool[i % len(pool)] for i in range(words))


@pytest.mark.parametrize("which", ["best", "export/hf"])
def test_pipeline_truncates_a_2000_word_text(exports, run_dir: Path, which: str) -> None:
    from transformers import pipeline

    model_dir = run_dir / which
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == MAX_LENGTH  # not 1e30 (tokenizers' default)
    text = long_text()
    assert len(text.split()) == 2000
    classify = pipeline("text-classification", model=str(model_dir), device="cpu")
    (got,) = classify(text, truncation=True)
    assert got["label"] in {"ham", "spam"} and 0.5 <= got["score"] <= 1
    # The same answer as the model on the first MAX_LENGTH tokens: truncation did it.
    import torch

    enc = classify.tokenizer(text, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape[-1] == MAX_LENGTH
    with torch.inference_mode():
        probs = classify.model(**enc).logits.softmax(-1)[0]
    assert got["score"] == pytest.approx(float(probs.max()), abs=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "int8"])
def test_onnx_dirs_are_in_optimums_layout(exports, fmt: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    out = exports[fmt][1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(
        manifest["files"]
    )
    config = AutoConfig.from_pretrained(str(out))
    assert config.id2label == {0: "ham", 1: "spam"} and config.label2id == {"ham": 0, "spam": 1}
    assert config.architectures == ["BertForSequenceClassification"]
    assert AutoTokenizer.from_pretrained(str(out)).model_max_length == MAX_LENGTH


def test_onnx_dir_alone_labels_100_emails_as_ftc_predict(
    ftc, exports, run_dir: Path, tmp_path: Path
) -> None:
    """100 demo emails the model never saw (past the TINY run's row limit). `ftc predict`
    gets them raw and runs the recipe's cleaning steps (parse_email, strip_html, redact_pii,
    ...); the plain client gets the text those very steps produce (predict.clean, what
    ftc predict calls), since a client without ftc has no email parser of its own."""
    from fine_tune_cli.predict import clean, read_inputs
    from fine_tune_cli.recipe import validate_tree

    emails = demo_rows()[TRAIN_ROWS : TRAIN_ROWS + 100]
    raw = tmp_path / "emails.jsonl"
    raw.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in emails))
    out = exports["onnx"][1]
    preds = tmp_path / "preds.jsonl"
    result = ftc("predict", out, raw, "--out", preds, "--json")
    assert result.code == 0, result.err
    want = read_jsonl(preds.read_text())

    recipe = validate_tree(json.loads((out / "manifest.json").read_text())["recipe"])
    cleaned = [r["text"] for r in clean(read_inputs(str(raw), recipe), recipe)]
    changed = sum(c != e["text"] for c, e in zip(cleaned, emails, strict=True))
    assert len(cleaned) == 100 and changed > 50  # the steps did change the raw emails
    texts = tmp_path / "cleaned.json"
    texts.write_text(json.dumps(cleaned))
    done = subprocess.run(
        [sys.executable, "-I", "-c", ONNX_CLIENT, str(out), str(texts)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    client = json.loads(done.stdout)
    assert client["max_tokens"] == MAX_LENGTH
    got = client["rows"]
    assert [r["label"] for r in got] == [r["label"] for r in want]  # 100/100
    np.testing.assert_allclose(
        [r["probs"] for r in got],
        [[r["probs"]["ham"], r["probs"]["spam"]] for r in want],
        atol=1e-5,
    )
