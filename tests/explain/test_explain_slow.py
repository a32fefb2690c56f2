"""Issue 16's figures for `ftc explain` (slow: each trains a usable model first).

Spam: the demo recipe trained on the first 800 bundled emails; the 20 first of the other
200 that the model calls spam are explained with IG. A spam indicator is a word whose
share of occurrences in spam emails of the training split is above 0.9 with at least 20
occurrences, counted here from the prepared training texts (augmented copies left out)
with words as `ftc explain` reports them: the tokenizer's words, case folded (so a word
means the same on both sides: "andrea_justice" is three, a CJK run one word per
character). IG's convergence delta must be within 5% of p(input) - p(baseline).

Digits: vit-digits trained on all but the last 50 of scikit-learn's digits, which are
explained: the share of |attribution| on stroke pixels (non-zero), with each patch's
score spread evenly over its pixels, against the share of the image they cover.

Each prints its figures (pytest -s shows them). Measured (2 shared CPU cores): see the
README's `ftc explain` section."""

from __future__ import annotations

import gzip
import json
import os
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DEMO_DATA, cli_env, run_cli
from tests.explain.test_explain import assert_baseline_warning_iff_alike

pytestmark = pytest.mark.slow

TRAIN_ROWS = 800  # demo rows the spam model trains on; the rest are the test emails
# Other spam models on the same emails and protocol, for comparison (the README's figures):
# FTC_TEST_SPAM_RECIPE=minilm-spam FTC_TEST_SPAM_OVERRIDES="train.epochs=3" (the demo
# emails are passed as its data either way), or overrides such as "model.dropout=0.3"
# (shell-quoted: "'data.augment=[{augment_words: {p_delete: 0.5}}]'").
# Short texts whose p(spam) shows whether spam words move the model at all.
PROBES = ("hello", "click here for free credit", "I think the kernel patch was wrong")
SPAM_RECIPE = os.environ.get("FTC_TEST_SPAM_RECIPE", "demo")
SPAM_OVERRIDES = shlex.split(os.environ.get("FTC_TEST_SPAM_OVERRIDES", ""))


def words_of(tokenizer: Any, text: str) -> list[str]:
    """The words of `text` as `ftc explain` reports them: the tokenizer's words (its
    pre-tokenizer's split, sub-tokens merged), case folded."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans: dict[int, list[int]] = {}
    for word, (start, end) in zip(enc.word_ids(), enc["offset_mapping"], strict=True):
        if word is not None:
            span = spans.setdefault(word, [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)
    return [text[a:b].strip().casefold() for a, b in spans.values()]


def indicator_words(run_dir: Path) -> set[str]:
    """Words with spam rate > 0.9 over >= 20 occurrences in the training emails the model
    was trained on (augmented copies not counted)."""
    from fine_tune_cli.data.prepare import prepare_dataset
    from fine_tune_cli.targets import prepared_for, resolve_target

    target = resolve_target(run_dir)
    prepared = tokenized = prepared_for(target)
    if target.recipe.data.augment:  # the same split (drawn before augmentation), no copies
        data = target.recipe.data.model_copy(update={"augment": ()})
        prepared = prepare_dataset(target.recipe.model_copy(update={"data": data}))[0]
    train = prepared.splits["train"]
    texts = train.texts(prepared.path)
    assert len(texts) == len(train)
    spam_id = prepared.label_names.index("spam")
    seen, in_spam = Counter(), Counter()
    for text, label in zip(texts, train.labels, strict=True):
        for word in words_of(tokenized.tokenizer, text):
            seen[word] += 1
            in_spam[word] += int(label == spam_id)
    return {w for w, n in seen.items() if n >= 20 and in_spam[w] / n > 0.9}


@pytest.fixture(scope="module")
def spam_explained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    """The demo recipe trained on the first 800 emails; IG of the first 20 held-out emails
    it calls spam; the indicator words of its training split."""
    work = tmp_path_factory.mktemp("spam-explain")
    with gzip.open(DEMO_DATA, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    held = work / "held.jsonl"
    held.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows[TRAIN_ROWS:]))
    with cli_env(cache_dir, work):
        run_dir = work / "runs" / "spam"
        trained = run_cli(
            "train", SPAM_RECIPE, f"data.source.path={DEMO_DATA}",
            f"data.source.limit={TRAIN_ROWS}", f"train.run_dir={run_dir}", *SPAM_OVERRIDES,
            "--json",
        )  # fmt: skip
        assert trained.code == 0, trained.err
        predicted = run_cli("predict", run_dir, held, "--out", "-")
        assert predicted.code == 0, predicted.err
        calls = [json.loads(line) for line in predicted.out.splitlines()]
        spam = [c["id"] for c in calls if c["label"] == "spam"][:20]
        assert len(spam) == 20
        emails = work / "spam20.jsonl"
        emails.write_text("".join(json.dumps({"text": rows[TRAIN_ROWS + i]["text"]}) + "\n"
                                  for i in spam))  # fmt: skip
        result = run_cli("explain", run_dir, emails, "--out", work / "why", "--json")
        assert result.code == 0, result.err
        indicators = indicator_words(run_dir)
        probes = work / "probes.jsonl"  # does the model need spam evidence to say spam?
        probes.write_text("".join(json.dumps({"text": t}) + "\n" for t in PROBES))
        probed = run_cli("predict", run_dir, probes, "--out", "-")
        assert probed.code == 0, probed.err
    explained = result.json()["explanations"]
    words = [json.loads(line)["words"] for line in (work / "why" / "explanations.jsonl").open()]
    seen = [bool({w["word"].casefold() for w in ws} & indicators) for ws in words]
    hits = [bool({t["word"].casefold() for t in e["top"]} & indicators) for e in explained]
    deltas = [e["relative_delta"] for e in explained]
    print(
        f"\nspam: validation f1_macro {trained.json()['metrics']['f1_macro']:.3f};"
        f" {len(indicators)} indicator words, in the (max_length) window of {sum(seen)}/20"
        f" emails; top-5 hits {sum(hits)}/20; relative IG delta max {max(deltas):.4f},"
        f" median {np.median(deltas):.4f}; p(spam) input median"
        f" {np.median([e['f_input'] for e in explained]):.3f}, baseline median"
        f" {np.median([e['f_baseline'] for e in explained]):.3f}, without the top 5 words"
        f" median {np.median([e['target_prob_without_top'] for e in explained]):.3f};"
        " p(spam) of "
        + ", ".join(
            f"{text!r} {json.loads(line)['probs']['spam']:.3f}"
            for text, line in zip(PROBES, probed.out.splitlines(), strict=True)
        )
    )
    return {"hits": hits, "deltas": deltas}


def test_spam_ig_converges(spam_explained: dict) -> None:
    assert max(spam_explained["deltas"]) <= 0.05


@pytest.mark.xfail(
    strict=True,  # an XPASS fails: the day the target is met, this marker must go
    reason="issue 16, open: the demo model detects ham, not spam ('hello' and 'click here"
    " for free credit' get the same p(spam), a blank email as much as real spam), so no"
    " faithful attribution ranks spam words first (printed figures, README); only 13 of"
    " the 20 emails hold an indicator word in their first data.max_length=128 tokens",
)
def test_spam_top_words_hold_spam_indicators(spam_explained: dict) -> None:
    assert sum(spam_explained["hits"]) >= 15


def test_vit_digits_attribution_sits_on_strokes(tmp_path: Path, cache_dir: Path) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    held = len(data.images) - 50
    images = np.round(data.images[held:] * (255 / 16)).astype(np.uint8)
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, array in enumerate(images):
        Image.fromarray(array).save(folder / f"{i:02d}.png")
    with cli_env(cache_dir, tmp_path):
        trained = run_cli("train", "vit-digits", f"data.source.limit={held}", "--json")
        assert trained.code == 0, trained.err
        result = run_cli("explain", tmp_path / "runs" / "vit-digits", folder, "--out",
                         tmp_path / "why", "--json")  # fmt: skip
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in (tmp_path / "why" / "explanations.jsonl").open()]
    shares, covers, correct = [], [], 0
    for row in rows:
        i = int(row["id"][:2])
        stroke = images[i] > 0
        side = row["patch_size"]
        per_pixel = np.kron(np.abs(np.array(row["grid"])), np.ones((side, side)))
        shares.append(per_pixel[stroke].sum() / per_pixel.sum())
        covers.append(stroke.mean())
        correct += row["label"] == str(data.target[held + i])
    ratio = float(np.mean(shares) / np.mean(covers))
    per_image = np.divide(shares, covers)
    deltas = [row["relative_delta"] for row in rows]
    assert_baseline_warning_iff_alike(rows, result.err)
    print(
        f"\ndigits: test accuracy {trained.json()['metrics'].get('accuracy'):.3f}; explained"
        f" 50, {correct} predicted right; |attribution| on strokes {np.mean(shares):.3f} vs"
        f" {np.mean(covers):.3f} of the pixels: {ratio:.2f}x (per image: median"
        f" {np.median(per_image):.2f}x, min {np.min(per_image):.2f}x);"
        f" relative IG delta max {max(deltas):.4f}; p(predicted) median"
        f" {np.median([r['target_prob'] for r in rows]):.3f}, without the top 5 patches"
        f" {np.median([r['target_prob_without_top'] for r in rows]):.3f}"
    )
    assert len(rows) == 50
    assert ratio >= 1.3
    assert max(deltas) <= 0.05
