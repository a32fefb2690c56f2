"""prepare: source file -> pipeline steps -> split -> balance/augment -> tokenizer -> encode
-> prepared dir in the content-addressed store (skipped when the hash is already there)."""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fine_tune_cli.data.steps import STEPS, Record, StepContext, run_pipeline
from fine_tune_cli.data.store import (
    HASH_SCHEME,
    PreparedDataset,
    PreparedSplit,
    cache_root,
    content_hash,
    entry_ready,
    open_prepared,
    publish,
    sha256_file,
    write_prepared_manifest,
    write_split,
)
from fine_tune_cli.errors import DataError, OutputError
from fine_tune_cli.locks import entry_lock
from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")

SPLITS = ("train", "validation", "test")


def hash_inputs(recipe: Recipe) -> dict[str, Any]:
    """Everything that determines the prepared data: source content, pipeline, split,
    tokenizer (settings or files) or image size, and the task's encoding. Paths do not
    count."""
    from fine_tune_cli.tasks import task_for

    return task_for(recipe.model).hash_inputs(recipe, HASH_SCHEME)


def text_hash_inputs(
    recipe: Recipe, scheme: int, encoder_revision: int | None = None
) -> dict[str, Any]:
    """hash_inputs of a text task. `encoder_revision`: a task whose encoder output changed
    for the same inputs sets one; it enters the hash of its recipes only (so other
    prepared dirs stay valid, stale ones are not reused)."""
    from fine_tune_cli.data.tokenizers import fingerprint_dir, tokenizer_source
    from fine_tune_cli.hub import snapshot_revision

    source = Path(recipe.data.source.path)
    if not source.is_file():
        raise DataError(f"{source}: data file not found (set data.source.path)")
    data = recipe.data.model_dump(mode="json")
    data.pop("cache_dir")
    data["source"].pop("path")
    kind, tok_dir = tokenizer_source(recipe)
    inputs = {
        "format": scheme,
        "source_sha256": sha256_file(source),
        "data": data,
        "family": recipe.model.family,
        "task": recipe.model.task,
        "tokenizer": kind,
        "tokenizer_files": fingerprint_dir(tok_dir) if tok_dir else None,
    }
    if encoder_revision is not None:
        inputs["encoder_revision"] = encoder_revision
    hub_sha = snapshot_revision(tok_dir) if tok_dir else None
    if hub_sha:  # a Hub tokenizer: a new revision of the repo prepares again
        inputs["tokenizer_revision"] = hub_sha
    return inputs


def prepared_path(recipe: Recipe, digest: str) -> Path:
    return cache_root(recipe.data.cache_dir) / "prepared" / digest[:16]


def data_hash(recipe: Recipe) -> str:
    return content_hash(hash_inputs(recipe))


def prepare_dataset(recipe: Recipe, *, force: bool = False) -> tuple[PreparedDataset, bool]:
    """Return the prepared dataset and whether it came from the cache."""
    inputs = hash_inputs(recipe)
    digest = content_hash(inputs)
    final = prepared_path(recipe, digest)
    if not force and entry_ready(final):  # a damaged entry warns and is rebuilt
        return open_prepared(final, digest), True
    with entry_lock(final):  # a second process preparing the same entry waits here ...
        if not force and entry_ready(final, warn=False):  # ... then reuses what it built
            return open_prepared(final, digest), True
        _build_entry(recipe, digest, inputs, final)
    return open_prepared(final, digest), False


def _build_entry(recipe: Recipe, digest: str, inputs: dict[str, Any], final: Path) -> None:
    """Build the entry in a temp dir and publish it (the caller holds its entry lock)."""
    started = time.time()
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        manifest = _build(recipe, digest, inputs, tmp)
        manifest["seconds"] = round(time.time() - started, 2)
        write_prepared_manifest(tmp, manifest)
        publish(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{final.parent}: cannot write prepared data ({exc.strerror})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_records(recipe: Recipe) -> tuple[list[Record], list[dict[str, Any]]]:
    """Read the source and run the pipeline steps (shared by prepare and `eval --data`)."""
    from fine_tune_cli.tasks import task_for

    task = task_for(recipe.model)
    records = task.read_source(recipe.data.source, task.needs_labels)
    steps = [(STEPS.get(s.name), s.parsed_params()) for s in recipe.data.steps]
    records, report = run_pipeline(records, steps, StepContext(seed=recipe.data.split.seed))
    if not records:
        raise DataError(
            f"{recipe.data.source.path}: no records left after the pipeline"
            f" ({_report_line(report)}); loosen data.steps"
        )
    return records, report


def labelled_records_from(
    recipe: Recipe, path: Path, label_names: list[str], **source: Any
) -> tuple[list[Record], np.ndarray]:
    """`ftc eval --data FILE`: FILE read as the recipe's source (plus `source` updates)
    through its pipeline, with the trained model's label ids; an unseen label is a
    DataError naming the file."""
    spec = recipe.data.source.model_copy(update={"path": str(path), **source})
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"source": spec})})
    records, _ = load_records(recipe)
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({r["label"] for r in records} - set(index), key=str)
    if unknown:
        raise DataError(
            f"{path}: labels not seen in training: {', '.join(map(str, unknown[:5]))}"
            f" (known: {', '.join(label_names[:10])})"
        )
    return records, np.array([index[r["label"]] for r in records], dtype=np.int64)


def _report_line(report: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['step']} {r['in']}->{r['out']}" for r in report) or "no steps"


def _build(recipe: Recipe, digest: str, inputs: dict[str, Any], out: Path) -> dict[str, Any]:
    from fine_tune_cli.tasks import task_for

    task = task_for(recipe.model)
    records, report = load_records(recipe)
    log.info("read %d records; pipeline: %s", len(records), _report_line(report))
    labels = task.label_names(recipe, records)
    splits = split_records(recipe, records)
    splits["train"] = _balance(recipe, splits["train"], labels)
    # Tasks that augment batches on the fly per epoch (images) do not bake it in here.
    if recipe.data.augment and not task.augments_batches:
        steps = [(STEPS.get(s.name), s.parsed_params()) for s in recipe.data.augment]
        before = len(splits["train"])
        splits["train"], aug_report = run_pipeline(
            splits["train"], steps, StepContext(seed=recipe.data.split.seed)
        )
        report += [{**r, "split": "train"} for r in aug_report]
        log.info("augmented train split: %d -> %d records", before, len(splits["train"]))

    encoded = task.encode(recipe, splits, labels, out)
    manifest = {
        "hash": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"path": recipe.data.source.path, "sha256": inputs["source_sha256"]},
        "data": recipe.data.model_dump(mode="json"),
        "task": recipe.model.task,
        "labels": labels,
        "class_weights": _class_weights(splits["train"], labels)
        if recipe.data.balance == "class_weight"
        else None,
        "pipeline": report,
        **encoded,  # "splits" (+ "tokenizer" for text)
    }
    return manifest


def build_tokenizer(
    recipe: Recipe, splits: dict[str, list[Record]], out: Path
) -> tuple[Any, dict[str, Any]]:
    """Load or train the recipe's tokenizer (on the train split) and save it in `out`;
    returns it with its manifest entry."""
    from fine_tune_cli.data.tokenizers import load_tokenizer, tokenizer_source, train_tokenizer

    kind, tok_dir = tokenizer_source(recipe)
    spec = recipe.data.tokenizer
    if tok_dir is not None:
        tokenizer = load_tokenizer(tok_dir)
    else:
        log.info("training a %s tokenizer (vocab %d) on the train split", kind, spec.vocab_size)
        tokenizer = train_tokenizer(
            kind,
            (r["text"] for r in splits["train"]),
            spec.vocab_size,
            spec.min_frequency,
            spec.lowercase,
        )
    tokenizer.save_pretrained(str(out / "tokenizer"))
    info = {
        "kind": kind,
        "from": str(tok_dir) if tok_dir else None,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
    }
    return tokenizer, info


def encode_classification(
    recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
) -> dict[str, Any]:
    """One token sequence per example (truncated to max_length) + its label id."""
    tokenizer, tok_info = build_tokenizer(recipe, splits, out)
    label_index = {name: i for i, name in enumerate(labels)}
    split_info = {}
    for name in SPLITS:
        rows = splits[name]
        ids = _encode(tokenizer, [r["text"] for r in rows], recipe.data.max_length)
        y = [label_index[r["label"]] for r in rows]
        split_info[name] = write_split(out, name, ids, y, [r["text"] for r in rows])
        counts = Counter(r["label"] for r in rows)
        split_info[name]["label_counts"] = {k: counts.get(k, 0) for k in labels}
    return {"tokenizer": tok_info, "splits": split_info}


def _stratify_labels(recipe: Recipe, records: list[Record]) -> list[Any] | None:
    """The value per record that splits are stratified by (None: not stratified)."""
    from fine_tune_cli.tasks import task_for

    return task_for(recipe.model).stratify_labels(records) if recipe.data.split.stratify else None


def split_records(recipe: Recipe, records: list[Record]) -> dict[str, list[Record]]:
    """Seeded train/validation/test split: stratified by label, or by whole groups."""
    from sklearn.model_selection import GroupShuffleSplit

    spec = recipe.data.split
    if records and "split" in records[0]:  # the source fixes the splits (split_folders)
        return _folder_splits(recipe, records)
    n = len(records)
    index = np.arange(n)
    holdout = spec.validation + spec.test
    if holdout == 0:
        return {"train": records, "validation": [], "test": []}
    if spec.by_group:
        groups = np.array([str(r.get("group")) for r in records])
        if len(set(groups)) < 3:
            raise DataError(
                f"{recipe.data.source.path}: split.by_group needs at least 3 distinct values"
                f" in column '{recipe.data.source.group}'"
            )
        outer = GroupShuffleSplit(n_splits=1, test_size=holdout, random_state=spec.seed)
        train_idx, rest = next(outer.split(index, groups=groups))
        if spec.test and spec.validation and len(set(groups[rest])) < 2:
            raise DataError(
                f"{recipe.data.source.path}: only {len(set(groups))} distinct"
                f" '{recipe.data.source.group}' values: too few whole groups for validation and"
                " test splits (use more data or set data.split.by_group=false)"
            )
        if spec.test and spec.validation:
            inner = GroupShuffleSplit(
                n_splits=1, test_size=spec.test / holdout, random_state=spec.seed
            )
            val_pos, test_pos = next(inner.split(rest, groups=groups[rest]))
            val_idx, test_idx = rest[val_pos], rest[test_pos]
        else:
            val_idx, test_idx = (rest, rest[:0]) if spec.validation else (rest[:0], rest)
    else:
        stratify = _stratify_labels(recipe, records) or None
        train_idx, rest = _split(index, holdout, stratify, spec.seed)
        if spec.test and spec.validation:
            sub = [stratify[i] for i in rest] if stratify else None
            val_idx, test_idx = _split(rest, spec.test / holdout, sub, spec.seed)
        else:
            val_idx, test_idx = (rest, rest[:0]) if spec.validation else (rest[:0], rest)
    out = {
        "train": [records[i] for i in sorted(train_idx)],
        "validation": [records[i] for i in sorted(val_idx)],
        "test": [records[i] for i in sorted(test_idx)],
    }
    if not out["train"]:
        raise DataError(f"{recipe.data.source.path}: too few records to split ({n})")
    return out


def _folder_splits(recipe: Recipe, records: list[Record]) -> dict[str, list[Record]]:
    """The splits an image folder's train/, validation/ (val/) and test/ folders give.
    Without a validation folder (the usual train/ + test/ layout of public sets),
    validation is carved out of train/ by data.split.validation, stratified by class and
    seeded like any split; test/ is never touched."""
    spec = recipe.data.split
    out = {name: [r for r in records if r["split"] == name] for name in SPLITS}
    train = out["train"]
    if not train:
        raise DataError(f"{recipe.data.source.path}: no training examples (train/ folder)")
    if out["validation"] or not spec.validation:
        return out
    stratify = _stratify_labels(recipe, train) or None
    keep, held = _split(np.arange(len(train)), spec.validation, stratify, spec.seed)
    out["train"] = [train[i] for i in sorted(keep)]
    out["validation"] = [train[i] for i in sorted(held)]
    log.info(
        "no validation/ folder: %d of %d train/ images held out for validation"
        " (data.split.validation=%g%s)",
        len(out["validation"]),
        len(train),
        spec.validation,
        ", stratified by class" if stratify else "",
    )
    return out


def _split(index: np.ndarray, fraction: float, stratify: list | None, seed: int):
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(index, test_size=fraction, stratify=stratify, random_state=seed)
    except ValueError as exc:
        if stratify is None:
            raise DataError(f"cannot split {len(index)} records: {exc}") from None
        # A class with a single member cannot be stratified; split without it.
        log.warning("stratified split impossible (%s); splitting without stratification", exc)
        return _split(index, fraction, None, seed)


def _balance(recipe: Recipe, train: list[Record], labels: list[str]) -> list[Record]:
    mode = recipe.data.balance
    if mode in ("none", "class_weight") or not labels:
        return train
    rng = random.Random(recipe.data.split.seed)
    by_label: dict[str, list[Record]] = {}
    for r in train:
        by_label.setdefault(r["label"], []).append(r)
    sizes = [len(v) for v in by_label.values()]
    target = max(sizes) if mode == "oversample" else min(sizes)
    out: list[Record] = []
    for label in sorted(by_label):
        rows = by_label[label]
        if mode == "oversample":
            out += rows + [rng.choice(rows) for _ in range(target - len(rows))]
        else:
            out += rng.sample(rows, target)
    rng.shuffle(out)
    log.info("balanced train split (%s): %d -> %d records", mode, len(train), len(out))
    return out


def _class_weights(train: list[Record], labels: list[str]) -> list[float]:
    """Inverse-frequency weights (sklearn's 'balanced' formula)."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([labels.index(r["label"]) for r in train])
    present = np.unique(y)
    weights = np.ones(len(labels))
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return [float(w) for w in weights]


def _encode(
    tokenizer: Any, texts: list[str], max_length: int, batch: int = 1000
) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), batch):
        enc = tokenizer(
            texts[start : start + batch],
            truncation=True,
            max_length=max_length,
            add_special_tokens=True,
            return_attention_mask=False,
        )
        ids.extend(enc["input_ids"])
    return ids


def text_split_from_file(
    recipe: Recipe, prepared: Any, path: Path
) -> tuple[PreparedSplit, list[str]]:
    """`ftc eval --data FILE` for a text classifier: the file through the run's pipeline
    and tokenizer, with the trained model's label ids (unseen labels are a DataError)."""
    records, labels = labelled_records_from(recipe, path, prepared.label_names)
    ids = _encode(prepared.tokenizer, [r["text"] for r in records], recipe.data.max_length)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    split = PreparedSplit(name=path.stem, input_ids=flat, offsets=offsets, labels=labels)
    return split, [r["text"] for r in records]
