"""Streaming prepare for text tasks: memory stays flat in the size of the corpus.

Three stages (docs/prepared-format.md):

1. **plan** (one pass over the source, one process): records are read as an iterator and
   run through the pipeline steps in chunks; survivors are spooled to disk (UTF-8 texts
   plus byte offsets) while only small per-record arrays (id, label code, group code) stay
   in memory. Exact `dedupe` writes a 64-bit key per record into 256 on-disk buckets and
   is resolved bucket by bucket (keep the first of each key). Splits, balancing, the label
   map, the leakage check and tokenizer training (on the train split, read back from the
   spool) all run here, on those arrays, so every split is exactly the one a list of
   records gave.
2. **encode** (any number of processes or machines, `--shard I/N`): each shard tokenises
   its contiguous slice of every split's example order, in chunks, optionally in
   `data.num_workers` processes, and appends token ids to files.
3. **finish** (`--merge`, or the end of an unsharded prepare): the shards' files are
   concatenated in order into the final arrays (packed LM blocks are cut here), so the
   result is byte-identical for any number of shards and workers.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fine_tune_cli.data.steps import STEPS, Pipeline, Record, Step, StepContext
from fine_tune_cli.errors import DataError, RecipeError
from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")

CHUNK = 1000  # records per chunk through the steps and per tokenizer batch
BUCKETS = 256  # on-disk buckets of exact-dedupe keys (top 8 bits of the key)
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class StreamEncoding:
    """How a text task turns examples into arrays (the task says; prepare does it).

    special_tokens: the tokenizer's [CLS] ... [SEP] template around each example.
    truncate: keep at most max_length tokens per example.
    separator: "eos" or "sep": that token appended after every document.
    pack: cut the joined token stream into blocks of max_length (no padding).
    wrap: each packed block holds max_length - 2 corpus tokens between [CLS] and [SEP].
    labels: examples carry label ids (labels.npy, label counts, class weights).
    texts: texts.jsonl beside the arrays (eval reports show them).
    stratify: splits are stratified by label.
    """

    special_tokens: bool = False
    truncate: bool = False
    separator: str | None = None
    pack: bool = False
    wrap: bool = False
    labels: bool = False
    texts: bool = False
    stratify: bool = False


# --------------------------------------------------------------------------- spool
class Spool:
    """Texts that survived the steps, on disk (UTF-8 + offsets), with small per-record
    arrays in memory: source id, label code, group code (codes in first-seen order)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._fh = open(folder / "texts.bin", "wb")  # noqa: SIM115  (closed in close())
        self.offsets = array("q", [0])
        self.ids = array("q")
        self.labels = array("i")
        self.groups = array("i")
        self.label_codes: dict[Any, int] = {}
        self.group_codes: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, records: list[Record]) -> None:
        pos = self.offsets[-1]
        for r in records:
            data = r["text"].encode("utf-8", "surrogatepass")
            self._fh.write(data)
            pos += len(data)
            self.offsets.append(pos)
            self.ids.append(r["id"])
            self.labels.append(self.label_codes.setdefault(r["label"], len(self.label_codes)))
            group = r.get("group")
            self.groups.append(self.group_codes.setdefault(group, len(self.group_codes)))

    def close(self) -> None:
        self._fh.close()


class SpoolReader:
    """Random access to a spool's texts by record index (reads, never a memory map: the
    pages of a mapped corpus would count as resident memory)."""

    def __init__(self, folder: Path, offsets: np.ndarray):
        self.offsets = offsets
        self._fd = os.open(folder / "texts.bin", os.O_RDONLY)

    def texts(self, index: np.ndarray) -> list[str]:
        if not len(index):
            return []
        lo, hi = int(index.min()), int(index.max())
        start, end = int(self.offsets[lo]), int(self.offsets[hi + 1])
        if end - start <= max(8 << 20, 4 * self._span(index)):  # one read covers them
            blob = os.pread(self._fd, end - start, start)
            return [
                blob[self.offsets[i] - start : self.offsets[i + 1] - start].decode(
                    "utf-8", "surrogatepass"
                )
                for i in index
            ]
        return [
            os.pread(
                self._fd, int(self.offsets[i + 1] - self.offsets[i]), int(self.offsets[i])
            ).decode("utf-8", "surrogatepass")
            for i in index
        ]

    def _span(self, index: np.ndarray) -> int:
        return int((self.offsets[index + 1] - self.offsets[index]).sum())

    def close(self) -> None:
        os.close(self._fd)


# --------------------------------------------------------------------------- exact dedupe
class KeyBuckets:
    """Exact-duplicate resolution on disk: (key, record index) pairs appended to 256 bucket
    files by the key's top byte, then each bucket sorted on its own (memory: one bucket)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._files = [open(folder / f"{b:03d}.bin", "wb") for b in range(BUCKETS)]  # noqa: SIM115

    def add(self, keys: np.ndarray, index: np.ndarray) -> None:
        bucket = (keys >> np.uint64(56)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")
        pairs = np.empty((len(keys), 2), dtype=np.uint64)
        pairs[:, 0], pairs[:, 1] = keys[order], index[order].astype(np.uint64)
        bounds = np.searchsorted(bucket[order], np.arange(BUCKETS + 1))
        for b in np.unique(bucket):
            self._files[b].write(pairs[bounds[b] : bounds[b + 1]].tobytes())

    def duplicates(self, n: int) -> np.ndarray:
        """Boolean mask over the n records: True where an earlier record has the key."""
        for fh in self._files:
            fh.close()
        dup = np.zeros(n, dtype=bool)
        for b in range(BUCKETS):
            path = self.folder / f"{b:03d}.bin"
            pairs = np.fromfile(path, dtype=np.uint64).reshape(-1, 2)
            path.unlink()
            if not len(pairs):
                continue
            order = np.lexsort((pairs[:, 1], pairs[:, 0]))
            keys, idx = pairs[order, 0], pairs[order, 1]
            later = np.concatenate([[False], keys[1:] == keys[:-1]])
            dup[idx[later].astype(np.int64)] = True
        shutil.rmtree(self.folder, ignore_errors=True)
        return dup


def _segments(steps: list[tuple[Step, Any]]) -> list[tuple[list[tuple[Step, Any]], Any]]:
    """The steps cut after each exact-duplicate step: [(steps, key step or None), ...]."""
    out: list[tuple[list[tuple[Step, Any]], Any]] = []
    current: list[tuple[Step, Any]] = []
    for spec, params in steps:
        if spec.key is not None:
            out.append((current, (spec, params)))
            current = []
        else:
            current.append((spec, params))
    out.append((current, None))
    return out


def spool_records(
    recipe: Recipe, records: Iterator[Record], work: Path, progress: Any = None
) -> tuple[Spool, np.ndarray, list[dict[str, Any]]]:
    """Run the recipe's steps over a record stream into a spool; returns the spool, the
    indices of its records that survive every step, and the pipeline report."""
    steps = [(STEPS.get(s.name), s.parsed_params()) for s in recipe.data.steps]
    ctx = StepContext(seed=recipe.data.split.seed)
    report: list[dict[str, Any]] = []
    source: Iterator[list[Record]] = _chunks(records, progress)
    segments = _segments(steps)
    for depth, (segment, keyed) in enumerate(segments):
        pipeline = Pipeline(segment, ctx)
        spool = Spool(work / f"spool{depth}")
        buckets = KeyBuckets(work / "keys") if keyed else None
        for chunk in source:
            chunk = pipeline.feed(chunk)
            if buckets is not None and chunk:
                spec, params = keyed
                keys = np.fromiter((spec.key(r, params) for r in chunk), np.uint64, len(chunk))
                start = len(spool)
                buckets.add(keys, np.arange(start, start + len(chunk), dtype=np.int64))
            spool.add(chunk)
        spool.close()
        report += pipeline.report()
        keep = np.arange(len(spool), dtype=np.int64)
        if buckets is not None:
            keep = keep[~buckets.duplicates(len(spool))]
            report.append({"step": keyed[0].name, "in": len(spool), "out": len(keep)})
        if depth == len(segments) - 1:
            return spool, keep, report
        source = _respool(spool, keep, work / f"spool{depth}")
    raise AssertionError("unreachable")


def _chunks(records: Iterator[Record], progress: Any) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for r in records:
        chunk.append(r)
        if len(chunk) == CHUNK:
            if progress is not None:
                progress.advance(len(chunk), counts={"rows": len(chunk)})
            yield chunk
            chunk = []
    if chunk:
        if progress is not None:
            progress.advance(len(chunk), counts={"rows": len(chunk)})
        yield chunk


def _respool(spool: Spool, keep: np.ndarray, folder: Path) -> Iterator[list[Record]]:
    """The kept records of a finished spool as chunks (the input of the next segment);
    the spool's files are removed once read."""
    labels = {code: name for name, code in spool.label_codes.items()}
    groups = {code: name for name, code in spool.group_codes.items()}
    reader = SpoolReader(folder, np.frombuffer(spool.offsets, dtype=np.int64))
    for start in range(0, len(keep), CHUNK):
        index = keep[start : start + CHUNK]
        texts = reader.texts(index)
        yield [
            {
                "id": spool.ids[i],
                "text": text,
                "label": labels[spool.labels[i]],
                "group": groups[spool.groups[i]],
            }
            for i, text in zip(index, texts, strict=True)
        ]
    reader.close()
    shutil.rmtree(folder, ignore_errors=True)


def sorted_codes(codes: array, names: dict[Any, int], key: Any = None) -> tuple[np.ndarray, list]:
    """Per-record codes renumbered so code order is the sorted order of their names (what
    np.unique does to the names themselves: splits on codes equal splits on names)."""
    by_code = sorted(names, key=lambda name: names[name])
    ranked = sorted(range(len(by_code)), key=lambda c: key(by_code[c]) if key else by_code[c])
    remap = np.empty(len(by_code), dtype=np.int64)
    remap[ranked] = np.arange(len(by_code))
    values = np.frombuffer(codes, dtype=np.int32).astype(np.int64) if len(codes) else None
    return (remap[values] if values is not None else np.zeros(0, np.int64)), [
        by_code[c] for c in ranked
    ]


def balanced_positions(mode: str, keys: list[Any], seed: int) -> list[int] | None:
    """Positions into the train split after data.balance (oversample / undersample by
    key), or None when the mode keeps the split as it is. The streaming path passes label
    codes, the in-memory path label names: the same seeded draws and shuffle either way."""
    if mode in ("none", "class_weight"):
        return None
    rng = random.Random(seed)
    by_key: dict[Any, list[int]] = {}
    for position, key in enumerate(keys):
        by_key.setdefault(key, []).append(position)
    sizes = [len(v) for v in by_key.values()]
    target = max(sizes) if mode == "oversample" else min(sizes)
    out: list[int] = []
    for key in sorted(by_key):
        rows = by_key[key]
        if mode == "oversample":
            out += rows + [rng.choice(rows) for _ in range(target - len(rows))]
        else:
            out += rng.sample(rows, target)
    rng.shuffle(out)
    log.info("balanced train split (%s): %d -> %d records", mode, len(keys), len(out))
    return out


def train_order(
    recipe: Recipe, train: np.ndarray, label_of: np.ndarray, balanced: bool
) -> np.ndarray:
    """The train split's example order after data.balance (over record indices exactly as
    over records: same seeded draws, same shuffle)."""
    if not balanced:
        return train
    keys = [int(label_of[i]) for i in train.tolist()]
    positions = balanced_positions(recipe.data.balance, keys, recipe.data.split.seed)
    return train if positions is None else train[np.asarray(positions, dtype=np.int64)]


def label_counts_check(recipe: Recipe, names: list[Any], counts: np.ndarray) -> list[str]:
    """The sorted label set; fewer than two labels cannot be learned (as count_labels)."""
    present = [str(n) for n, c in zip(names, counts, strict=True) if c]
    if len(present) < 2:
        only = present[0] if present else None
        raise DataError(
            f"{recipe.data.source.path}: column '{recipe.data.source.label}' has only one"
            f" label ({only!r}); classification needs at least two"
        )
    return present


def require_separator(ids: dict[str, int | None], encoding: StreamEncoding) -> int | None:
    """The id appended after each document (EOS or SEP); a tokenizer without the tokens
    the encoding needs is a recipe error (`ids`: special token ids by name)."""
    if encoding.separator == "eos":
        if ids["eos"] is None:
            raise RecipeError("data.tokenizer: causal LM needs a tokenizer with an EOS token (bpe)")
        return int(ids["eos"])
    if encoding.separator == "sep" or encoding.wrap:
        if ids["cls"] is None or ids["sep"] is None or ids["mask"] is None:
            raise RecipeError(
                "data.tokenizer: masked LM needs [CLS], [SEP] and [MASK] tokens"
                " (a wordpiece tokenizer)"
            )
        return int(ids["sep"])
    return None


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False))
    os.replace(tmp, path)


def label_histogram(labels: np.ndarray, n_labels: int) -> np.ndarray:
    return np.bincount(labels, minlength=n_labels) if len(labels) else np.zeros(n_labels, int)


def counter_dict(names: list[str], counts: Counter) -> dict[str, int]:
    return {k: counts.get(k, 0) for k in names}


# --------------------------------------------------------------------------- plan
PLAN = "plan.json"


def build_plan(recipe: Recipe, encoding: StreamEncoding, folder: Path, progress: Any) -> None:
    """Stage 1: read + steps + split + balance + leakage + label map + tokenizer, written to
    `folder` (spool, per-split example orders, tokenizer/, plan.json)."""
    from fine_tune_cli.data.prepare import _report_line, split_positions
    from fine_tune_cli.data.sources import iter_text_records

    records = iter_text_records(recipe.data.source, encoding.labels)
    spool, keep, report = spool_records(recipe, records, folder, progress)
    if not len(keep):
        raise DataError(
            f"{recipe.data.source.path}: no records left after the pipeline"
            f" ({_report_line(report)}); loosen data.steps"
        )
    log.info("read %d records; pipeline: %s", len(keep), _report_line(report))
    spool_dir = spool.folder
    label_names: list[str] = []
    label_of = np.zeros(len(spool), dtype=np.int64)
    if encoding.labels or encoding.stratify:
        codes, names = sorted_codes(spool.labels, spool.label_codes, key=str)
        counts = np.bincount(codes[keep], minlength=len(names))
        label_names = label_counts_check(recipe, names, counts)
        label_of = (np.cumsum(counts > 0) - 1)[codes]  # ids among the labels present
    groups = None
    if recipe.data.split.by_group:
        group_codes, _ = sorted_codes(spool.groups, spool.group_codes, key=str)
        groups = group_codes[keep]
    stratify = label_of[keep] if encoding.stratify and recipe.data.split.stratify else None
    positions = split_positions(recipe, len(keep), stratify, groups)
    order = {name: keep[np.asarray(sorted(pos), dtype=np.int64)] for name, pos in positions.items()}
    offsets = np.frombuffer(spool.offsets, dtype=np.int64).copy()
    leakage = None
    if recipe.data.leakage != "off":
        leakage = check_leakage(recipe, SpoolReader(spool_dir, offsets), order)
    order["train"] = train_order(recipe, order["train"], label_of, bool(label_names))
    for name in SPLITS:
        np.save(folder / f"{name}.npy", order[name])
    np.save(folder / "offsets.npy", offsets)
    np.save(folder / "ids.npy", np.frombuffer(spool.ids, dtype=np.int64))
    np.save(folder / "labels.npy", label_of)
    plan = {
        "spool": spool_dir.name,
        "labels": label_names,
        "pipeline": report,
        "leakage": leakage,
    }
    write_json(folder / PLAN, plan)


class Plan:
    """A finished plan, read back (every shard process and the merge open it)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / PLAN).read_text())
        self.offsets = np.load(folder / "offsets.npy")
        self.ids = np.load(folder / "ids.npy")
        self.label_of = np.load(folder / "labels.npy")
        self.orders = {name: np.load(folder / f"{name}.npy") for name in SPLITS}
        self.reader = SpoolReader(folder / self.meta["spool"], self.offsets)

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["labels"])

    def examples(
        self, recipe: Recipe, split: str, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """(texts, label ids) per chunk of a split's examples [start:stop), after the
        recipe's train augmentation (train only; per record, so any slicing agrees)."""
        order = self.orders[split][start:stop]
        augment = None
        if split == "train" and recipe.data.augment:
            steps = [(STEPS.get(s.name), s.parsed_params()) for s in recipe.data.augment]
            augment = Pipeline(steps, StepContext(seed=recipe.data.split.seed))
        self.augment_report: list[dict[str, Any]] = []
        names = self.label_names
        for begin in range(0, len(order), CHUNK):
            index = order[begin : begin + CHUNK]
            texts = self.reader.texts(index)
            labels = self.label_of[index]
            if augment is not None:
                records = [
                    {"id": int(self.ids[i]), "text": t, "label": names[y] if names else None,
                     "group": None}
                    for i, t, y in zip(index, texts, labels, strict=True)
                ]  # fmt: skip
                records = augment.feed(records)
                texts = [r["text"] for r in records]
                label_ids = {name: k for k, name in enumerate(names)}
                labels = np.asarray(
                    [label_ids[r["label"]] if names else 0 for r in records], dtype=np.int64
                )
            yield texts, labels
        if augment is not None:
            self.augment_report = [{**r, "split": "train"} for r in augment.report()]

    def close(self) -> None:
        self.reader.close()


def check_leakage(
    recipe: Recipe, reader: SpoolReader, order: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Count (and with `drop`, remove) validation/test records whose near duplicate is in
    train: MinHash LSH over the train texts, queried with each held-out text."""
    from fine_tune_cli.data.near_dup import NearIndex

    spec = recipe.data
    index = NearIndex(spec.leakage_threshold, spec.leakage_shingle)
    train = order["train"]
    for begin in range(0, len(train), CHUNK):
        part = train[begin : begin + CHUNK]
        for i, text in zip(part, reader.texts(part), strict=True):
            index.add(int(i), index.signature(text))
    result: dict[str, Any] = {
        "mode": spec.leakage,
        "threshold": spec.leakage_threshold,
        "shingle": spec.leakage_shingle,
    }
    for name in ("validation", "test"):
        held = order[name]
        leaked = np.zeros(len(held), dtype=bool)
        for begin in range(0, len(held), CHUNK):
            part = held[begin : begin + CHUNK]
            for k, text in enumerate(reader.texts(part)):
                leaked[begin + k] = bool(index.query(index.signature(text)))
        result[name] = {"records": len(held), "near_duplicates_in_train": int(leaked.sum())}
        if spec.leakage == "drop":
            order[name] = held[~leaked]
            result[name]["dropped"] = int(leaked.sum())
    log.info(
        "leakage: %d of %d validation and %d of %d test records have a near duplicate in"
        " train (threshold %g)%s",
        result["validation"]["near_duplicates_in_train"],
        result["validation"]["records"],
        result["test"]["near_duplicates_in_train"],
        result["test"]["records"],
        spec.leakage_threshold,
        "; dropped" if spec.leakage == "drop" else "",
    )
    return result
