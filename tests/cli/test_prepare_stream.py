"""Streaming prepare (issue 14): the same bytes for any number of workers and shards, exact
dedupe resolved on disk like the in-memory set, near duplicates and leakage found where
planted, a killed prepare never leaves a complete-looking entry, the source fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# --------------------------------------------------------------------------- corpora
WORDS = [f"w{i}" for i in range(400)]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def lm_corpus(path: Path, docs: int = 300, seed: int = 0) -> Path:
    """Paragraph documents with exact duplicates (for dedupe) in a txt file."""
    rng = random.Random(seed)
    texts = [sentence(rng, rng.randint(20, 60)) for _ in range(docs)]
    texts += [texts[i] for i in range(0, docs, 7)]  # exact duplicates, later in the file
    path.write_text("\n\n".join(texts) + "\n")
    return path


def lm_recipe(path: Path, data: Path, extra: str = "") -> Path:
    path.write_text(
        f"""
version: 1
name: stream-lm
model: {{family: gpt2, task: clm, size: tiny}}
data:
  source: {{path: {data}, format: txt, txt_unit: paragraph}}
  steps: [lowercase, dedupe, {{filter_length: {{min_words: 3}}}}]
  split: {{validation: 0.1, test: 0.1, seed: 0}}
  tokenizer: {{kind: bpe, vocab_size: 400}}
  max_length: 32
{extra}
"""
    )
    return path


def cls_corpus(path: Path, n: int = 300, seed: int = 0, planted: int = 0) -> list[tuple[int, int]]:
    """jsonl of 100-word texts with two labels; `planted` edited copies (one word replaced)
    of the first texts appended. Returns the (original, copy) row pairs."""
    rng = random.Random(seed)
    rows = [{"text": sentence(rng, 100), "label": rng.choice(["a", "b", "c"])} for _ in range(n)]
    pairs = []
    for k in range(planted):
        words = rows[k]["text"].split()
        words[rng.randrange(len(words))] = "edited"
        rows.append({"text": " ".join(words), "label": rows[k]["label"]})
        pairs.append((k, len(rows) - 1))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return pairs


def cls_recipe(path: Path, data: Path, extra: str = "") -> Path:
    path.write_text(
        f"""
version: 1
name: stream-cls
model: {{family: bert, task: classification, size: tiny}}
data:
  source: {{path: {data}, text: text, label: label}}
  steps: [dedupe]
  split: {{validation: 0.15, test: 0.15, seed: 3}}
  tokenizer: {{kind: bpe, vocab_size: 400}}
  max_length: 48
{extra}
"""
    )
    return path


def digest_dir(path: Path) -> dict[str, str]:
    """sha256 of every file of a prepared dir; the manifest without its timing fields."""
    out = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = str(file.relative_to(path))
        if rel == "manifest.json":
            manifest = json.loads(file.read_text())
            manifest.pop("created"), manifest.pop("seconds"), manifest["data"].pop("cache_dir")
            for entry in manifest.get("files", {}).values():  # when written, not what
                entry.pop("mtime_ns", None)
            out[rel] = json.dumps(manifest, sort_keys=True)
        else:
            out[rel] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def prepared(ftc, recipe: Path, *args: str) -> dict:
    res = ftc("prepare", recipe, *args, "--json")
    assert res.code == 0, res.err
    return res.json()


# --------------------------------------------------------------------------- bytes
def test_two_workers_write_the_bytes_one_worker_writes(ftc, tmp_path: Path) -> None:
    """data.num_workers=2 tokenises chunks in spawned processes; the prepared dir is
    byte-identical to one worker's (same hash, so the second run is --force)."""
    recipe = lm_recipe(tmp_path / "r.yaml", lm_corpus(tmp_path / "c.txt", docs=1500))
    one = prepared(ftc, recipe, "data.num_workers=1", "--force")
    first = digest_dir(Path(one["outputs"]["prepared"]))
    two = prepared(ftc, recipe, "data.num_workers=2", "--force")
    assert two["hash"] == one["hash"]
    assert digest_dir(Path(two["outputs"]["prepared"])) == first
    assert one["splits"]["train"] > 32 * 100  # blocks from two chunks of 1,000 documents


@pytest.mark.slow  # three CLI processes (~60 s on 2 busy cores); the in-process test below is fast
def test_shards_in_two_processes_then_merge_equal_one_prepare(tmp_path: Path) -> None:
    """`--shard 0/2` and `--shard 1/2` as two concurrent processes, then `--merge`: the
    same prepared bytes as one unsharded prepare, for a recipe that trains its (byte-level
    BPE) tokenizer and dedupes; the staging area is gone afterwards."""
    data = lm_corpus(tmp_path / "c.txt", docs=600)
    recipe = lm_recipe(tmp_path / "r.yaml", data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def ftc_proc(cache: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "fine_tune_cli", "prepare", str(recipe), *args, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "FTC_CACHE_DIR": str(cache)},
        )

    whole = ftc_proc(tmp_path / "one")
    shards = [ftc_proc(tmp_path / "many", "--shard", f"{i}/2") for i in range(2)]
    for proc in [whole, *shards]:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    merge = ftc_proc(tmp_path / "many", "--merge")
    out, err = merge.communicate(timeout=300)
    assert merge.returncode == 0, err
    merged = Path(json.loads(out.splitlines()[-1])["outputs"]["prepared"])
    single = next((tmp_path / "one" / "prepared").iterdir())
    assert merged.name == single.name
    assert digest_dir(merged) == digest_dir(single)
    assert sorted(p.name for p in merged.parent.iterdir()) == [merged.name]  # no staging


def test_classification_shards_merge_on_first_prepare_and_match(ftc, tmp_path: Path) -> None:
    """Three shards of a labelled, stratified, oversampled corpus; the next plain prepare
    (what `ftc train` calls) finds them all done and merges: labels, texts, offsets and
    class weights equal an unsharded prepare's; merging before every shard is done is
    refused naming the missing shard."""
    cls_corpus(tmp_path / "c.jsonl", n=240)
    recipe = cls_recipe(tmp_path / "r.yaml", tmp_path / "c.jsonl", "  balance: oversample")
    whole = prepared(ftc, recipe, "data.cache_dir=one")
    for i in (0, 2):
        res = prepared(ftc, recipe, "data.cache_dir=many", "--shard", f"{i}/3")
        assert res["shard"] == f"{i}/3"
    early = ftc("prepare", recipe, "data.cache_dir=many", "--merge")
    assert early.code == 3 and "1 not done" in early.err
    prepared(ftc, recipe, "data.cache_dir=many", "--shard", "1/3")
    merged = prepared(ftc, recipe, "data.cache_dir=many")  # the merge train would do
    assert not merged["cache_hit"]
    assert digest_dir(Path(merged["outputs"]["prepared"])) == digest_dir(
        Path(whole["outputs"]["prepared"])
    )


def test_bad_shard_arguments_are_usage_errors(ftc, tmp_path: Path) -> None:
    recipe = lm_recipe(tmp_path / "r.yaml", lm_corpus(tmp_path / "c.txt", docs=20))
    for bad in ("2/2", "x", "1/0"):
        res = ftc("prepare", recipe, "--shard", bad)
        assert res.code == 2 and "--shard" in res.err, res.err
    res = ftc("prepare", recipe, "--shard", "0/2", "--merge")
    assert res.code == 2


# --------------------------------------------------------------------------- dedupe
def test_on_disk_dedupe_keeps_what_the_in_memory_set_keeps(tmp_path: Path, monkeypatch) -> None:
    """Streamed in chunks of 7, exact dedupe (text and text_label) resolved in on-disk
    buckets keeps exactly the records the set-based step keeps, in order, and steps after
    it see only the survivors."""
    from fine_tune_cli.data import stream
    from fine_tune_cli.data.steps import STEPS, StepContext, run_pipeline
    from fine_tune_cli.recipe import load_recipe

    monkeypatch.setattr(stream, "CHUNK", 7)
    rng = random.Random(1)
    pool = [f"text {i}" for i in range(40)]
    records = [
        {"id": i, "text": rng.choice(pool), "label": rng.choice("xy"), "group": None}
        for i in range(300)
    ]
    for key in ("text", "text_label"):
        (tmp_path / "r.yaml").write_text(
            f"""
version: 1
name: dedupe-check
model: {{family: bert, task: classification, size: tiny}}
data:
  source: {{path: x.jsonl, label: label}}
  steps: [{{dedupe: {{key: {key}}}}}, {{filter_length: {{min_chars: 7}}}}]
"""
        )
        recipe = load_recipe(tmp_path / "r.yaml").recipe
        steps = [(STEPS.get(s.name), s.parsed_params()) for s in recipe.data.steps]
        expected, report = run_pipeline([dict(r) for r in records], steps, StepContext())
        spool, keep, streamed_report = stream.spool_records(recipe, iter(records), tmp_path / key)
        spool_ids = np.frombuffer(spool.ids, dtype=np.int64)
        assert [int(spool_ids[i]) for i in keep] == [r["id"] for r in expected]
        assert streamed_report == report


# --------------------------------------------------------------------------- near dupes
def test_near_dedupe_and_leakage_find_planted_edited_copies(ftc, tmp_path: Path) -> None:
    """40 copies of 100-word texts with one word replaced (shingle Jaccard ~0.9): the
    near_dedupe step at its documented default (threshold 0.8, 5-word shingles) drops all
    40 and nothing else; without it, the leakage check counts exactly the held-out texts
    whose planted twin went to train, and `drop` removes them."""
    pytest.importorskip("datasketch")
    pairs = cls_corpus(tmp_path / "c.jsonl", n=400, planted=40)
    recipe = cls_recipe(tmp_path / "r.yaml", tmp_path / "c.jsonl")
    res = prepared(ftc, recipe, "data.steps=[near_dedupe]")
    assert res["pipeline"] == [{"step": "near_dedupe", "in": 440, "out": 400}]

    report = prepared(ftc, recipe, "data.leakage=report")
    root = Path(report["outputs"]["prepared"])
    rows = [json.loads(line)["text"] for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    twin = {rows[a]: rows[b] for a, b in pairs} | {rows[b]: rows[a] for a, b in pairs}
    split_texts = {
        name: [json.loads(line)["text"] for line in (root / name / "texts.jsonl").open()]
        for name in ("train", "validation", "test")
    }
    train = set(split_texts["train"])
    for name in ("validation", "test"):
        expected = sum(twin.get(t) in train for t in split_texts[name])
        found = report["leakage"][name]["near_duplicates_in_train"]
        assert found == expected, (name, found, expected)
    assert (
        report["leakage"]["validation"]["near_duplicates_in_train"]
        + report["leakage"]["test"]["near_duplicates_in_train"]
        > 0
    )
    human = ftc("prepare", recipe, "data.leakage=report")
    assert "near-duplicate a train record" in human.err + human.out

    dropped = prepared(ftc, recipe, "data.leakage=drop")
    for name in ("validation", "test"):
        leaked = report["leakage"][name]["near_duplicates_in_train"]
        assert dropped["splits"][name] == report["splits"][name] - leaked


# --------------------------------------------------------------------------- cache
def test_killed_prepare_leaves_no_complete_entry_and_the_next_one_cleans_up(
    ftc, tmp_path: Path
) -> None:
    """SIGKILL in the middle of a prepare: the entry does not exist (only a temp dir does);
    the next prepare builds it, removes the dead builder's temp dir and leaves only the
    entry."""
    recipe = lm_recipe(tmp_path / "r.yaml", lm_corpus(tmp_path / "c.txt", docs=6000))
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fine_tune_cli", "prepare", str(recipe)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1", "FTC_CACHE_DIR": str(cache)},
    )
    deadline = time.monotonic() + 120
    root = cache / "prepared"
    while not (root.is_dir() and any(p.name.startswith(".tmp-") for p in root.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not any((p / "COMPLETE").exists() for p in root.iterdir())
    assert all(p.name.startswith(".") for p in root.iterdir())  # temp dirs, lock: no entry
    res = ftc("prepare", recipe, f"data.cache_dir={cache}", "--json")
    assert res.code == 0 and not res.json()["cache_hit"], res.err
    assert [p.name for p in root.iterdir()] == [Path(res.json()["outputs"]["prepared"]).name]


def test_source_key_samples_blocks_above_the_documented_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above FULL_HASH_MAX_BYTES the source key is size + mtime + sampled blocks: a byte
    changed in a sampled block or a new mtime change it; below, the full sha256 is used."""
    from fine_tune_cli.data import prepare

    path = tmp_path / "big.txt"
    path.write_bytes(os.urandom(3 << 20))
    assert prepare.file_fingerprint(path) == prepare.sha256_file(path)
    monkeypatch.setattr(prepare, "FULL_HASH_MAX_BYTES", 1 << 20)
    monkeypatch.setattr(prepare, "SAMPLED_BLOCK_BYTES", 4096)
    key = prepare.file_fingerprint(path)
    assert key.startswith("sampled:")
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[10] ^= 1  # inside the first sampled block
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = prepare.file_fingerprint(path)
    assert changed != key
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert prepare.file_fingerprint(path) not in (key, changed)


def test_new_data_keys_leave_existing_hashes_alone(tmp_path: Path) -> None:
    """num_workers never enters the data hash; leakage only when set (recipes that predate
    these keys keep their cache entries and resumable checkpoints)."""
    from fine_tune_cli.data.prepare import data_hash
    from fine_tune_cli.recipe import load_recipe

    recipe = lm_recipe(tmp_path / "r.yaml", lm_corpus(tmp_path / "c.txt", docs=20))
    base = data_hash(load_recipe(recipe).recipe)
    assert data_hash(load_recipe(recipe, ["data.num_workers=4"]).recipe) == base
    assert data_hash(load_recipe(recipe, ["data.leakage=off"]).recipe) == base
    assert data_hash(load_recipe(recipe, ["data.leakage=report"]).recipe) != base


def test_prepare_logs_rows_and_tokens_per_second_off_terminal(ftc, tmp_path: Path) -> None:
    """Off a terminal, prepare writes periodic progress lines with rows/s (reading) and
    tokens/s (tokenising) every log.progress_every seconds."""
    recipe = lm_recipe(tmp_path / "r.yaml", lm_corpus(tmp_path / "c.txt", docs=3000))
    res = ftc("prepare", recipe, "log.progress_every=0.001", "--force")
    assert res.code == 0, res.err
    lines = res.err.splitlines()
    assert any("prepare: read" in line and "rows/s" in line for line in lines), res.err
    assert any("prepare: tokenise 1/1" in line and "tokens/s" in line for line in lines), res.err


def test_a_revised_step_enters_the_hash_of_the_recipes_using_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step whose output changed (revision > 1) re-prepares the recipes that use it and
    leaves every other recipe's hash (cache entries, resumable checkpoints) alone."""
    from dataclasses import replace

    from fine_tune_cli.data import steps
    from fine_tune_cli.data.prepare import data_hash, hash_inputs
    from fine_tune_cli.recipe import load_recipe

    recipe = lm_recipe(tmp_path / "r.yaml", lm_corpus(tmp_path / "c.txt", docs=20))
    plain = load_recipe(recipe, ["data.steps=[dedupe]"]).recipe
    cased = load_recipe(recipe).recipe  # lowercase, dedupe, filter_length
    assert "step_revisions" not in hash_inputs(plain)
    before = data_hash(plain), data_hash(cased)
    bumped = replace(steps.STEPS.get("lowercase"), revision=2)
    monkeypatch.setitem(steps.STEPS._items, "lowercase", bumped)
    assert hash_inputs(cased)["step_revisions"] == {"lowercase": 2}
    assert data_hash(plain) == before[0]
    assert data_hash(cased) != before[1]


def test_a_fresh_cache_prepares_the_same_tokenizer_and_token_ids(ftc, tmp_path: Path) -> None:
    """`ftc prepare demo` (its own WordPiece) into three fresh caches: the same tokenizer
    file and token ids each time. The WordPiece trainer breaks ties between merges of
    equal count by ids it hands out in hash-map order, so before the pieces were given
    sorted ids these differed from run to run (and machine to machine)."""
    seen = set()
    for i in range(3):
        cache = tmp_path / f"cache{i}"
        res = ftc("prepare", "demo", "data.source.limit=400", f"data.cache_dir={cache}", "--json")
        assert res.code == 0, res.err
        (folder,) = (cache / "prepared").iterdir()
        seen.add(
            (
                hashlib.sha256((folder / "tokenizer" / "tokenizer.json").read_bytes()).hexdigest(),
                hashlib.sha256((folder / "train" / "input_ids.npy").read_bytes()).hexdigest(),
            )
        )
    assert len(seen) == 1
