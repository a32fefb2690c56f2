"""Token classification (`model.task: token_classification`): partially labelled tagging
data in jsonl and CoNLL columns, labels on the first sub-token, null tags ignored by loss
and metrics, eval's metrics checked against what predict writes and an independent
baseline, and the HF export opened by `pipeline("token-classification")`.

One tiny BERT is trained once on generated data (module fixture); everything else reads it.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fine_tune_cli.data.tagged_sources import read_tagged
from fine_tune_cli.errors import DataError
from fine_tune_cli.recipe import SourceSpec
from fine_tune_cli.tasks.token_classification import (
    IGNORE,
    TokenClassificationTask,
    baseline_tags,
    first_subtoken_labels,
    tagging_metrics,
)
from tests.conftest import REPO, cli_env, needs_shared, run_cli

# A word's tag follows from the word (so a per-word baseline is strong) except "bank" and
# "fly", whose tag follows from the word before them (what context buys a model).
WORD_TAGS = {
    "dog": "B-noun.animal",
    "cat": "B-noun.animal",
    "horse": "B-noun.animal",
    "red": "B-adj.all",
    "big": "B-adj.all",
    "quickly": "B-adv.all",
    "runs": "B-verb.motion",
    "jumps": "B-verb.motion",
    "photosynthesis": "B-noun.process",  # several WordPiece pieces: labels the first only
}
FILLERS = ["the", "a", "on", "with", "and", "near", "today"]


def sentence(rng: random.Random) -> dict:
    """Random words; about half the words carry a tag, the rest null (not annotated), an
    occasional filler tagged O, and sometimes the two-word entity new york."""
    tokens: list[str] = []
    tags: list[str | None] = []
    for _ in range(rng.randint(3, 9)):
        if rng.random() < 0.15:
            tokens += ["new", "york"]
            tags += ["B-noun.location", "I-noun.location"]
        elif rng.random() < 0.2:
            before = rng.choice(["river", "money"])
            tokens += [before, "bank"]
            tags += [None, "B-noun.object" if before == "river" else "B-noun.group"]
        elif rng.random() < 0.6:
            word = rng.choice(sorted(WORD_TAGS))
            tokens.append(word)
            tags.append(WORD_TAGS[word] if rng.random() < 0.7 else None)
        else:
            tokens.append(rng.choice(FILLERS))
            tags.append("O" if rng.random() < 0.2 else None)
    return {"tokens": tokens, "tags": tags}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def write_recipe(folder: Path, data: Path, **extra: str) -> Path:
    recipe = folder / "tags.yaml"
    recipe.write_text(
        "# token classification on generated data\n"
        "name: tags\n"
        "description: tiny tagger for tests\n"
        "model: {family: bert, task: token_classification, size: tiny}\n"
        "data:\n"
        f"  source: {{path: {data.name}, text: tokens, label: tags}}\n"
        "  split: {validation: 0.15, test: 0.2, seed: 0}\n"
        "  tokenizer: {vocab_size: 120, min_frequency: 1}\n"
        "  max_length: 64\n"
        "optim: {lr: 0.005}\n"
        "train: {max_steps: 60, batch_size: 16, eval_every: 30, best_metric: token_accuracy}\n"
    )
    return recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("token-classification")
    rng = random.Random(0)
    rows = [sentence(rng) for _ in range(400)]
    data = write_jsonl(work / "tags.jsonl", rows)
    recipe = write_recipe(work, data)
    with cli_env(cache_dir, work):
        train = run_cli("train", recipe, "--json")
        assert train.code == 0, train.err
        ev = run_cli("eval", work / "runs" / "tags", "--split", "test", "--json")
        assert ev.code == 0, ev.err
    run = work / "runs" / "tags"
    prepared = Path(json.loads((run / "provenance.json").read_text())["data"]["path"])
    return SimpleNamespace(
        work=work, rows=rows, recipe=recipe, run=run, prepared=prepared, train=train, eval=ev
    )


def split_rows(trained: SimpleNamespace, split: str) -> list[dict]:
    """The generated rows of a prepared split, found by their text (equal texts have equal
    tags here: a tag follows from the words)."""
    by_text = {" ".join(r["tokens"]): r for r in trained.rows}
    with open(trained.prepared / split / "texts.jsonl", encoding="utf-8") as fh:
        return [by_text[json.loads(line)["text"]] for line in fh]


# --------------------------------------------------------------------------- end to end
def test_train_and_eval_report_tagging_metrics(trained: SimpleNamespace):
    metrics = trained.eval.json()["metrics"]
    for name in ("token_accuracy", "baseline_token_accuracy", "precision", "recall", "f1"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["loss"] > 0
    test = split_rows(trained, "test")
    assert metrics["tagged_words"] == sum(t is not None for r in test for t in r["tags"])
    report = json.loads((trained.run / "eval" / "test" / "metrics.json").read_text())
    assert {"noun.animal", "noun.location"} <= set(report["per_class"])  # per entity type
    assert trained.train.json()["metrics"]["best_step"] in (30, 60)


def test_baseline_is_the_per_word_most_frequent_train_tag(trained: SimpleNamespace):
    """Recomputed here from the rows of the prepared splits, independently of the task."""
    by_word: dict[str, Counter] = {}
    for row in split_rows(trained, "train"):
        for token, tag in zip(row["tokens"], row["tags"], strict=True):
            if tag is not None:
                by_word.setdefault(token.lower(), Counter())[tag] += 1
    overall = sum(by_word.values(), Counter())
    majority = max(sorted(overall), key=lambda t: overall[t])
    right = total = 0
    for row in split_rows(trained, "test"):
        for token, tag in zip(row["tokens"], row["tags"], strict=True):
            if tag is None:
                continue
            counts = by_word.get(token.lower())
            guess = max(sorted(counts), key=lambda t: counts[t]) if counts else majority
            right += guess == tag
            total += 1
    assert trained.eval.json()["metrics"]["baseline_token_accuracy"] == pytest.approx(right / total)


def test_predict_rows_agree_with_eval_metrics(trained: SimpleNamespace, cache_dir: Path):
    """Scoring what `ftc predict` writes for the test sentences (null gold words dropped,
    seqeval for entities) gives exactly the figures `ftc eval` reported."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    test = split_rows(trained, "test")
    inputs = write_jsonl(
        trained.work / "test-inputs.jsonl", [{"tokens": r["tokens"]} for r in test]
    )
    out = trained.work / "predictions.jsonl"
    with cli_env(cache_dir, trained.work):
        result = run_cli("predict", trained.run, inputs, "--out", out, "--json")
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(test)))
    gold, pred = [], []
    for row, source in zip(rows, test, strict=True):
        assert set(row) == {"id", "tokens", "tags", "scores"}
        assert row["tokens"] == source["tokens"]
        assert len(row["tags"]) == len(row["scores"]) == len(source["tokens"])
        assert all(0 < s <= 1 for s in row["scores"])
        kept = [i for i, t in enumerate(source["tags"]) if t is not None]
        gold.append([source["tags"][i] for i in kept])
        pred.append([row["tags"][i] for i in kept])
    metrics = trained.eval.json()["metrics"]
    words = sum(len(g) for g in gold)
    right = sum(a == b for g, p in zip(gold, pred, strict=True) for a, b in zip(g, p, strict=True))
    assert metrics["token_accuracy"] == pytest.approx(right / words)
    kept = [(g, p) for g, p in zip(gold, pred, strict=True) if g]
    y_true, y_pred = [g for g, _ in kept], [p for _, p in kept]
    assert metrics["precision"] == pytest.approx(precision_score(y_true, y_pred, zero_division=0))
    assert metrics["recall"] == pytest.approx(recall_score(y_true, y_pred, zero_division=0))
    assert metrics["f1"] == pytest.approx(f1_score(y_true, y_pred, zero_division=0))
    counts = result.json()["label_counts"]
    assert sum(counts.values()) == sum(len(r["tags"]) for r in rows)


def test_predict_plain_text_from_stdin(trained: SimpleNamespace, cache_dir: Path):
    with cli_env(cache_dir, trained.work):
        result = run_cli(
            "predict", trained.run, "-", "--out", "-", stdin=b"the dog runs\n\nnew york\n"
        )
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert [r["tokens"] for r in rows] == [["the", "dog", "runs"], ["new", "york"]]
    assert all(len(r["tags"]) == len(r["tokens"]) for r in rows)


def test_hf_export_opens_in_the_token_classification_pipeline(
    trained: SimpleNamespace, cache_dir: Path
):
    from transformers import pipeline

    with cli_env(cache_dir, trained.work):
        result = run_cli("export", trained.run, "--format", "hf", "--json")
        assert result.code == 0, result.err
        out = Path(result.json()["outputs"]["dir"])
        predicted = run_cli(
            "predict", out, "-", "--out", "-", stdin=b'{"tokens": ["the", "cat", "jumps"]}\n'
        )
    assert predicted.code == 0, predicted.err
    ours = json.loads(predicted.out)
    config = json.loads((out / "config.json").read_text())
    tag_names = set(json.loads((trained.prepared / "manifest.json").read_text())["labels"])
    assert set(config["id2label"].values()) == tag_names
    tagger = pipeline("token-classification", model=str(out), ignore_labels=[])
    # Each word's first sub-token (where it starts in the text) carries our tag and score.
    first = {f["start"]: f for f in tagger("the cat jumps")}
    found = [first[start] for start in (0, 4, 8)]
    assert [f["entity"] for f in found] == ours["tags"]
    assert [float(f["score"]) for f in found] == pytest.approx(ours["scores"], abs=1e-5)


def test_conll_columns_train_like_jsonl(tmp_path: Path, cache_dir: Path):
    """The same sentences as CoNLL columns (`_` = not annotated) prepare the same data."""
    rng = random.Random(1)
    rows = [sentence(rng) for _ in range(60)]
    lines = ["-DOCSTART- -X- O", ""]
    for row in rows:
        lines += [
            f"{tok}\tX\t{tag or '_'}" for tok, tag in zip(row["tokens"], row["tags"], strict=True)
        ]
        lines.append("")
    conll = tmp_path / "tags.conll"
    conll.write_text("\n".join(lines))
    jsonl = write_jsonl(tmp_path / "tags.jsonl", rows)
    prepared = {}
    for data in (conll, jsonl):
        recipe = write_recipe(tmp_path, data)
        with cli_env(cache_dir, tmp_path):
            result = run_cli("prepare", recipe, "--json")
        assert result.code == 0, result.err
        prepared[data.suffix] = Path(result.json()["outputs"]["prepared"])
    for split in ("train", "test"):
        a, b = (np.load(prepared[s] / split / "tag_ids.npy") for s in (".conll", ".jsonl"))
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------- bad data
@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"tokens": ["a", "b"], "tags": ["O"]}, "1 tags in 'tags' for 2 tokens"),
        ({"tokens": "a b", "tags": ["O", "O"]}, "'tokens' must be a non-empty list"),
        ({"tokens": ["a", ""], "tags": ["O", "O"]}, "token 1 of 'tokens'"),
        ({"tokens": ["a"], "tags": [3]}, "tag 0 of 'tags' must be a non-empty string or null"),
        ({"tokens": ["a"]}, "missing key 'tags'"),
    ],
)
def test_bad_rows_exit_3_naming_file_and_line(
    tmp_path: Path, cache_dir: Path, row: dict, expected: str
):
    good = {"tokens": ["the", "dog"], "tags": [None, "B-noun.animal"]}
    data = write_jsonl(tmp_path / "tags.jsonl", [good, good, row])
    recipe = write_recipe(tmp_path, data)
    with cli_env(cache_dir, tmp_path):
        result = run_cli("prepare", recipe, "--json")
    assert result.code == 3, result.err
    message = result.json()["message"]
    assert message.startswith(f"{data}: line 3: "), message
    assert expected in message


def test_bad_conll_line_names_file_and_line(tmp_path: Path):
    conll = tmp_path / "bad.conll"
    conll.write_text("the\tO\ndog\tB-noun.animal\n\nlonely\n")
    with pytest.raises(DataError, match=r"bad\.conll: line 4: expected 'TOKEN TAG'"):
        read_tagged(SourceSpec(path=str(conll), label="tags"))


def test_reader_keeps_nulls_and_gzip(tmp_path: Path):
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"tokens": ["new", "york"], "tags": ["B-loc", None]}) + "\n")
    (record,) = read_tagged(SourceSpec(path=str(path), text="tokens", label="tags"))
    assert record["tokens"] == ["new", "york"] and record["tags"] == ["B-loc", None]
    assert record["text"] == "new york"


def test_only_one_tag_is_a_data_error(tmp_path: Path, cache_dir: Path):
    rows = [{"tokens": ["a", "dog"], "tags": [None, "B-x"]}] * 20
    recipe = write_recipe(tmp_path, write_jsonl(tmp_path / "tags.jsonl", rows))
    with cli_env(cache_dir, tmp_path):
        result = run_cli("prepare", recipe, "--json")
    assert result.code == 3 and "only one tag ('B-x')" in result.json()["message"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.balance=class_weight", "data.balance: 'class_weight' balances whole examples"),
        ("data.source.label=null", "data.source.label: token classification needs the field"),
    ],
)
def test_recipe_rules_exit_2(tmp_path: Path, cache_dir: Path, override: str, expected: str):
    rng = random.Random(2)
    recipe = write_recipe(tmp_path, write_jsonl(tmp_path / "t.jsonl", [sentence(rng)] * 30))
    with cli_env(cache_dir, tmp_path):
        result = run_cli("prepare", recipe, override, "--json")
    assert result.code == 2, result.err
    assert expected in result.json()["message"]


# --------------------------------------------------------------------------- units
def test_labels_sit_on_the_first_sub_token_only():
    from fine_tune_cli.data.tokenizers import train_tokenizer
    from fine_tune_cli.tasks.token_classification import encode_words

    texts = ["the photo of a plant", "synthesis of the photo"] * 20
    tokenizer = train_tokenizer("wordpiece", lambda: iter(texts), 80, 1, True)
    ids, word_ids = encode_words(tokenizer, [["the", "photosynthesis", "plant"]], 32)
    pieces = tokenizer.convert_ids_to_tokens(ids[0])
    assert len([w for w in word_ids[0] if w == 1]) > 1, pieces  # split into several pieces
    labels = first_subtoken_labels(word_ids[0], [IGNORE, 7, 9])
    assert labels[word_ids[0].index(1)] == 7
    assert labels.count(7) == 1 and labels.count(9) == 1
    assert labels[0] == IGNORE and labels[-1] == IGNORE  # [CLS], [SEP]
    assert sum(label != IGNORE for label in labels) == 2  # the null word and pieces: none


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given (per batch row, position, tag)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.out = logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return SimpleNamespace(logits=self.out[: input_ids.shape[0], : input_ids.shape[1]])


def test_loss_ignores_null_tagged_words_and_continuation_pieces():
    task = TokenClassificationTask(pad_id=0, label_names=["B-a", "B-b", "I-a"])
    labels = torch.tensor([[IGNORE, 0, IGNORE, IGNORE, 2, IGNORE]])  # 2 annotated words
    batch = {
        "input_ids": torch.ones(1, 6, dtype=torch.long),
        "attention_mask": torch.ones(1, 6, dtype=torch.long),
        "labels": labels,
    }
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 3, generator=gen)
    loss = task.loss(FixedLogits(logits), batch)
    expected = torch.nn.functional.cross_entropy(logits[0, [1, 4]], torch.tensor([0, 2]))
    assert loss.item() == pytest.approx(expected.item())
    # Whatever the model says where nothing is annotated changes nothing ...
    noisy = logits.clone()
    noisy[0, [0, 2, 3, 5]] = torch.randn(4, 3, generator=gen) * 10
    assert task.loss(FixedLogits(noisy), batch).item() == pytest.approx(loss.item())
    # ... while an annotated word's logits do count.
    moved = logits.clone()
    moved[0, 4] += torch.tensor([5.0, 0.0, 0.0])
    assert task.loss(FixedLogits(moved), batch).item() != pytest.approx(loss.item())
    # A micro-batch without any annotated word: zero loss, not NaN.
    empty = {**batch, "labels": torch.full_like(labels, IGNORE)}
    assert task.loss(FixedLogits(logits), empty).item() == 0.0


def test_evaluate_drops_null_gold_words_before_scoring():
    """Gold B-a, (null), I-a, B-b: the null word goes, so B-a I-a is one entity."""
    from fine_tune_cli.data.store import PreparedSplit

    names = ["B-a", "B-b", "I-a"]
    tag_ids = np.array([IGNORE, 0, IGNORE, 2, 1, IGNORE], dtype=np.int32)
    split = PreparedSplit(
        name="test",
        input_ids=np.arange(6, dtype=np.int32),
        offsets=np.array([0, 6]),
        labels=None,
        extra={"tag_ids": tag_ids, "baseline_ids": np.array([IGNORE, 0, IGNORE, 0, 0, IGNORE])},
    )
    logits = torch.full((1, 6, 3), -5.0)
    logits[0, :, 1] = 5.0  # B-b everywhere, the null word included ...
    logits[0, 1, 0] = logits[0, 3, 2] = 10.0  # ... but B-a I-a where they are annotated
    task = TokenClassificationTask(pad_id=0, label_names=names)
    import contextlib

    metrics = task.evaluate(
        FixedLogits(logits), split, 4, torch.device("cpu"), contextlib.nullcontext
    ).metrics
    assert metrics["token_accuracy"] == 1.0
    assert metrics["precision"] == metrics["recall"] == metrics["f1"] == 1.0
    assert metrics["per_class"]["a"]["support"] == 1  # B-a I-a: one entity, not two
    assert metrics["baseline_token_accuracy"] == pytest.approx(1 / 3)


def test_tagging_metrics_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-LOC"]]
    base = [["O", "O", "O", "B-LOC"], ["O"]]
    m = tagging_metrics(gold, pred, base, bio=True)
    assert m["token_accuracy"] == pytest.approx(4 / 5)
    assert m["baseline_token_accuracy"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(2 / 3)  # PER, LOC right; ORG wrong
    assert m["recall"] == pytest.approx(2 / 3)  # PER, LOC of PER, LOC, LOC
    assert m["per_class"]["LOC"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    plain = tagging_metrics([["NN", "VB"]], [["NN", "NN"]], [["NN", "NN"]], bio=False)
    assert plain["token_accuracy"] == 0.5 and "f1" not in plain  # not BIO: no entities


def test_baseline_table_ties_and_majority():
    rows = [
        {"tokens": ["Bank", "x"], "tags": ["B-b", None]},
        {"tokens": ["bank"], "tags": ["B-a"]},
        {"tokens": ["y"], "tags": ["B-a"]},
    ]
    table, majority = baseline_tags(rows)
    assert table == {"bank": "B-a", "y": "B-a"}  # a tie goes to the first name
    assert majority == "B-a"


# --------------------------------------------------------------------------- real data
def test_wordnet_recipe_prepares_the_shared_data(tmp_path: Path, cache_dir: Path):
    needs_shared("wordnet_tagging.jsonl.gz")
    with cli_env(cache_dir, tmp_path):
        result = run_cli(
            "prepare",
            REPO / "recipes" / "bert-wordnet-tags.yaml",
            "data.source.limit=400",
            "data.tokenizer.vocab_size=500",
            "--json",
        )
    assert result.code == 0, result.err
    manifest = json.loads(
        (Path(result.json()["outputs"]["prepared"]) / "manifest.json").read_text()
    )
    assert all(label.startswith(("B-", "I-")) for label in manifest["labels"])
    assert manifest["splits"]["test"]["tagged_words"] > 0
