"""prepare: source file -> pipeline steps -> split -> balance/augment -> tokenizer -> encode
-> prepared dir in the content-addressed store (skipped when the hash is already there)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fine_tune_cli.data.shards import complete_parts, part_dirs, publish_part
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
from fine_tune_cli.data.stream import PLAN, StreamEncoding, balanced_positions, write_json
from fine_tune_cli.errors import DataError, OutputError, RecipeError
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
    kind, tok_dir = tokenizer_source(recipe)
    inputs = {
        "format": scheme,
        "source_sha256": file_fingerprint(source),
        "data": hashed_data(recipe),
        "family": recipe.model.family,
        "task": recipe.model.task,
        "tokenizer": kind,
        "tokenizer_files": fingerprint_dir(tok_dir) if tok_dir else None,
    }
    if encoder_revision is not None:
        inputs["encoder_revision"] = encoder_revision
    revised = step_revisions(recipe)
    if revised:
        inputs["step_revisions"] = revised
    hub_sha = snapshot_revision(tok_dir) if tok_dir else None
    if hub_sha:  # a Hub tokenizer: a new revision of the repo prepares again
        inputs["tokenizer_revision"] = hub_sha
    return inputs


def step_revisions(recipe: Recipe) -> dict[str, int]:
    """The recipe's text steps whose output changed since revision 1, by name."""
    from fine_tune_cli.data.steps import STEPS

    used = sorted({spec.name for spec in (*recipe.data.steps, *recipe.data.augment)})
    return {s.name: s.revision for s in map(STEPS.get, used) if s.revision > 1}


def hashed_data(recipe: Recipe) -> dict[str, Any]:
    """The data section as it enters the hash: the source path, the cache location and
    data.num_workers do not change the prepared bytes; keys added later count only when
    set away from their default (recipes that predate them keep their hash)."""
    from fine_tune_cli.recipe.schema import (
        DATA_KEYS_HASHED_IF_SET,
        DATA_KEYS_OUT_OF_HASH,
        DataSpec,
    )

    data = recipe.data.model_dump(mode="json")
    for key in DATA_KEYS_OUT_OF_HASH:
        data.pop(key, None)
    for key in DATA_KEYS_HASHED_IF_SET:
        if data.get(key) == DataSpec.model_fields[key].default:
            data.pop(key, None)
    data["source"].pop("path")
    return data


# Sources up to this size are hashed whole (sha256: ~0.5-1 s per GiB). Larger ones by
# size, mtime and a sha256 of 64 evenly spaced 1 MiB blocks (first and last included), so
# `ftc train` on a 100 GB corpus does not reread it: an edit that keeps size and mtime and
# misses every sampled block would go unnoticed (`ftc prepare --force` rebuilds).
FULL_HASH_MAX_BYTES = 1 << 30
SAMPLED_BLOCKS = 64
SAMPLED_BLOCK_BYTES = 1 << 20


def file_fingerprint(path: Path) -> str:
    """The source's content key: its sha256, or above FULL_HASH_MAX_BYTES a sampled key."""
    import hashlib

    stat = path.stat()
    if stat.st_size <= FULL_HASH_MAX_BYTES:
        return sha256_file(path)
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    step = (stat.st_size - SAMPLED_BLOCK_BYTES) / (SAMPLED_BLOCKS - 1)
    with open(path, "rb") as fh:
        for k in range(SAMPLED_BLOCKS):
            fh.seek(int(k * step))
            digest.update(fh.read(SAMPLED_BLOCK_BYTES))
    return f"sampled:{digest.hexdigest()}"


def prepared_path(recipe: Recipe, digest: str) -> Path:
    return cache_root(recipe.data.cache_dir) / "prepared" / digest[:16]


def data_hash(recipe: Recipe) -> str:
    return content_hash(hash_inputs(recipe))


def prepare_dataset(recipe: Recipe, *, force: bool = False) -> tuple[PreparedDataset, bool]:
    """Return the prepared dataset and whether it came from the cache. When every shard of
    a sharded prepare (`--shard I/N`) is done, this merges them (`ftc train` after shards)."""
    inputs = hash_inputs(recipe)
    digest = content_hash(inputs)
    final = prepared_path(recipe, digest)
    if not force and entry_ready(final):  # a damaged entry warns and is rebuilt
        return open_prepared(final, digest), True
    with entry_lock(final):  # a second process preparing the same entry waits here ...
        if not force and entry_ready(final, warn=False):  # ... then reuses what it built
            return open_prepared(final, digest), True
        encoding = stream_encoding(recipe)
        parts = complete_parts(staging_path(final)) if encoding else None
        if parts is not None:
            _build_entry(recipe, digest, inputs, final, merge=parts)
        else:
            _build_entry(recipe, digest, inputs, final)
    return open_prepared(final, digest), False


def stream_encoding(recipe: Recipe) -> StreamEncoding | None:
    """How the recipe's task encodes a streamed corpus; None: its records are prepared as
    one list (images, token classification, sentence pairs)."""
    from fine_tune_cli.tasks import task_for

    return task_for(recipe.model).stream_encoding(recipe)


def staging_path(final: Path) -> Path:
    """Where the plan and the shards of a sharded prepare live until the merge."""
    return final.parent / f".staging-{final.name}"


def prepare_shard(recipe: Recipe, shard: int, count: int, *, force: bool = False) -> dict[str, Any]:
    """`ftc prepare --shard I/N`: the plan (read, steps, split, tokenizer) is built once,
    by the first shard process to take the entry's lock, the others wait and reuse it;
    then this shard tokenises its slice of every split into the staging dir."""
    inputs = hash_inputs(recipe)
    digest = content_hash(inputs)
    final = prepared_path(recipe, digest)
    encoding = stream_encoding(recipe)
    if encoding is None:
        raise RecipeError(
            f"--shard: task {recipe.model.task} is prepared in one process; drop --shard"
        )
    staging = staging_path(final)
    plan_dir = staging / "plan"
    with entry_lock(final):
        if not force and entry_ready(final):
            return {"hash": digest, "path": str(final), "cache_hit": True, "shard": shard}
        if not (plan_dir / PLAN).is_file():
            _guarded(final, lambda tmp: _make_plan(recipe, encoding, tmp), plan_dir)
    part = part_dirs(staging, count)[shard]
    _guarded(
        final,
        lambda tmp: _encode_part(recipe, encoding, plan_dir, tmp, shard, count),
        part,
        publish_part,
    )
    done = sum((p / "DONE").is_file() for p in part_dirs(staging, count))
    return {
        "hash": digest,
        "path": str(final),
        "cache_hit": False,
        "shard": shard,
        "shards_done": done,
        "shards": count,
    }


def merge_shards(recipe: Recipe, *, force: bool = False) -> tuple[PreparedDataset, bool]:
    """`ftc prepare --merge`: every shard must be done; their parts become the entry."""
    inputs = hash_inputs(recipe)
    digest = content_hash(inputs)
    final = prepared_path(recipe, digest)
    with entry_lock(final):
        if not force and entry_ready(final):
            return open_prepared(final, digest), True
        staging = staging_path(final)
        parts = complete_parts(staging) if staging.is_dir() else None
        if parts is None:
            from fine_tune_cli.data.shards import missing_parts

            shown = missing_parts(staging) if staging.is_dir() else "no shard has run"
            raise DataError(
                f"{final}: cannot merge: {shown}; run `ftc prepare RECIPE --shard I/N` for"
                " every I first"
            )
        _build_entry(recipe, digest, inputs, final, merge=parts)
    return open_prepared(final, digest), False


def _guarded(final: Path, build: Any, target: Path, publish_to: Any = None) -> None:
    """Build into a temp dir beside `target`, then rename it into place (a killed build
    leaves only a temp dir, never a complete-looking one)."""
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        if publish_to is not None:
            publish_to(tmp, target)
        else:
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{final.parent}: cannot write prepared data ({exc.strerror})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build_entry(
    recipe: Recipe,
    digest: str,
    inputs: dict[str, Any],
    final: Path,
    merge: list[Path] | None = None,
) -> None:
    """Build the entry in a temp dir and publish it (the caller holds its entry lock).
    `merge`: the finished shard parts to assemble instead of preparing from the source."""
    started = time.time()
    encoding = stream_encoding(recipe)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        # We hold the entry's lock, so no live process is writing these: a killed builder's.
        shutil.rmtree(stale, ignore_errors=True)

    def build(tmp: Path) -> None:
        if merge is not None:
            manifest = _finish(recipe, digest, inputs, encoding, merge[0].parent.parent / "plan",
                               merge, tmp)  # fmt: skip
        elif encoding is not None:
            manifest = _build_streamed(recipe, digest, inputs, encoding, tmp)
        else:
            manifest = _build(recipe, digest, inputs, tmp)
        manifest["seconds"] = round(time.time() - started, 2)
        write_prepared_manifest(tmp, manifest)

    _guarded(final, build, final, publish)
    if merge is not None:
        shutil.rmtree(merge[0].parent.parent, ignore_errors=True)


def _build_streamed(
    recipe: Recipe, digest: str, inputs: dict[str, Any], encoding: StreamEncoding, out: Path
) -> dict[str, Any]:
    """Plan, one part holding every example, finish: the unsharded streaming prepare."""
    work = out / ".work"
    _make_plan(recipe, encoding, work / "plan")
    part = work / "parts-1" / "0"
    _encode_part(recipe, encoding, work / "plan", part, 0, 1)
    manifest = _finish(recipe, digest, inputs, encoding, work / "plan", [part], out)
    shutil.rmtree(work)
    return manifest


def _progress(recipe: Recipe, name: str) -> Any:
    from fine_tune_cli.console import Progress

    return Progress(None, every=recipe.log.progress_every, unit="rows", name=name)


def _make_plan(recipe: Recipe, encoding: StreamEncoding, folder: Path) -> None:
    """Stage 1 (stream.build_plan), then the tokenizer on the train examples."""
    from fine_tune_cli.data.stream import Plan, build_plan, require_separator

    with _progress(recipe, "prepare: read") as progress:
        build_plan(recipe, encoding, folder, progress)
    plan = Plan(folder)

    def texts() -> Iterator[str]:  # one read of the train split per tokenizer pass
        return (t for chunk, _ in plan.examples(recipe, "train") for t in chunk)

    try:
        tokenizer, info = _tokenizer_from_texts(recipe, texts, folder)
    finally:
        plan.close()
    meta = plan.meta
    meta["tokenizer"] = info
    # What the encoders need, so shards read tokenizer.json alone (no transformers import).
    meta["special_ids"] = {
        name: getattr(tokenizer, f"{name}_token_id") for name in ("eos", "cls", "sep", "mask")
    }
    require_separator(meta["special_ids"], encoding)
    write_json(folder / PLAN, meta)


def _encode_part(
    recipe: Recipe, encoding: StreamEncoding, plan_dir: Path, out: Path, shard: int, count: int
) -> None:
    """Stage 2: tokenise shard `shard` of `count` (a contiguous slice of every split's
    example order) into part files, in data.num_workers processes."""
    from fine_tune_cli.data.shards import PartWriter, Tokenise
    from fine_tune_cli.data.stream import Plan, require_separator

    plan = Plan(plan_dir)
    sep = require_separator(plan.meta["special_ids"], encoding)
    tok = Tokenise(plan_dir / "tokenizer", encoding, recipe.data.max_length, sep,
                   recipe.data.num_workers)  # fmt: skip
    reports: list[dict[str, Any]] = []
    try:
        with _progress(recipe, f"prepare: tokenise {shard + 1}/{count}") as progress:
            for name in SPLITS:
                n = len(plan.orders[name])
                start, stop = shard * n // count, (shard + 1) * n // count
                writer = PartWriter(out / name, encoding)
                chunks = ((texts, (labels, texts)) for texts, labels in
                          plan.examples(recipe, name, start, stop))  # fmt: skip
                for (labels, texts), ids, lengths in tok.map(chunks):
                    writer.write(ids, lengths, labels, texts)
                    progress.advance(len(lengths), counts={"rows": len(lengths),
                                                           "tokens": len(ids)})  # fmt: skip
                writer.close()
                reports += plan.augment_report
    finally:
        tok.close()
        plan.close()
    write_json(out / "report.json", reports)


def _finish(
    recipe: Recipe,
    digest: str,
    inputs: dict[str, Any],
    encoding: StreamEncoding,
    plan_dir: Path,
    parts: list[Path],
    out: Path,
) -> dict[str, Any]:
    """Stage 3: the parts of every shard, in order, become the prepared arrays."""
    import json

    from fine_tune_cli.data.shards import finish_examples, finish_packed

    meta = json.loads((plan_dir / PLAN).read_text())
    labels = meta["labels"]
    shutil.copytree(plan_dir / "tokenizer", out / "tokenizer")
    wrap = None
    if encoding.wrap:
        wrap = (meta["special_ids"]["cls"], meta["special_ids"]["sep"])
    split_info = {}
    for name in SPLITS:
        folders = [p / name for p in parts]
        if encoding.pack:
            split_info[name] = finish_packed(out, name, folders, recipe.data.max_length, wrap)
        else:
            split_info[name] = finish_examples(out, name, folders, encoding, labels)
    augment: dict[tuple[str, str], list[int]] = {}
    for part in parts:  # per-shard augmentation counts, summed
        for row in json.loads((part / "report.json").read_text()):
            key = (row["step"], row.get("split", ""))
            augment.setdefault(key, [0, 0])
            augment[key][0] += row["in"]
            augment[key][1] += row["out"]
    report = meta["pipeline"] + [
        {"step": step, "in": n_in, "out": n_out, "split": split}
        for (step, split), (n_in, n_out) in augment.items()
    ]
    if recipe.data.augment and augment:
        log.info(
            "augmented train split: %d -> %d records",
            len(np.load(plan_dir / "train.npy")),
            sum(n_out for (step, _), (_, n_out) in augment.items() if step == report[-1]["step"]),
        )
    class_weights = None
    if recipe.data.balance == "class_weight" and labels:
        y = np.load(out / "train" / "labels.npy")
        class_weights = _class_weights_of(y, labels)
    data = recipe.data.model_dump(mode="json")
    data.pop("num_workers", None)  # not part of what was prepared (any count: same bytes)
    manifest = {
        "hash": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"path": recipe.data.source.path, "sha256": inputs["source_sha256"]},
        "data": data,
        "task": recipe.model.task,
        "labels": labels,
        "class_weights": class_weights,
        "pipeline": report,
        "tokenizer": meta["tokenizer"],
        "splits": split_info,
    }
    if meta.get("leakage"):
        manifest["leakage"] = meta["leakage"]
    return manifest


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
    if recipe.data.leakage != "off":
        raise RecipeError(
            f"data.leakage: not available for {recipe.model.family} {recipe.model.task}"
            " (text classification, clm and mlm recipes); set data.leakage=off"
        )
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

    return _tokenizer_from_texts(recipe, lambda: (r["text"] for r in splits["train"]), out)


def _tokenizer_from_texts(
    recipe: Recipe, texts: Callable[[], Iterable[str]], out: Path
) -> tuple[Any, dict[str, Any]]:
    from fine_tune_cli.data.tokenizers import load_tokenizer, tokenizer_source, train_tokenizer

    kind, tok_dir = tokenizer_source(recipe)
    spec = recipe.data.tokenizer
    if tok_dir is not None:
        tokenizer = load_tokenizer(tok_dir)
    else:
        log.info("training a %s tokenizer (vocab %d) on the train split", kind, spec.vocab_size)
        tokenizer = train_tokenizer(
            kind, texts, spec.vocab_size, spec.min_frequency, spec.lowercase
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
    if records and "split" in records[0]:  # the source fixes the splits (split_folders)
        return _folder_splits(recipe, records)
    groups = None
    if recipe.data.split.by_group:
        groups = np.array([str(r.get("group")) for r in records])
    stratify = _stratify_labels(recipe, records) or None
    index = split_positions(recipe, len(records), stratify, groups)
    return {name: [records[i] for i in sorted(index[name])] for name in SPLITS}


def split_positions(
    recipe: Recipe, n: int, stratify: Any, groups: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The split of n records as index arrays, from per-record values only: `stratify`
    (labels, or codes numbered in the labels' sorted order: the same split) and `groups`
    (names or codes in sorted order, with split.by_group). Prepare streams a corpus by
    keeping just these arrays, never the records."""
    spec = recipe.data.split
    index = np.arange(n)
    holdout = spec.validation + spec.test
    if holdout == 0:
        return {"train": index, "validation": index[:0], "test": index[:0]}
    if spec.by_group:
        from sklearn.model_selection import GroupShuffleSplit

        assert groups is not None
        if len(np.unique(groups)) < 3:
            raise DataError(
                f"{recipe.data.source.path}: split.by_group needs at least 3 distinct values"
                f" in column '{recipe.data.source.group}'"
            )
        outer = GroupShuffleSplit(n_splits=1, test_size=holdout, random_state=spec.seed)
        train_idx, rest = next(outer.split(index, groups=groups))
        if spec.test and spec.validation and len(np.unique(groups[rest])) < 2:
            raise DataError(
                f"{recipe.data.source.path}: only {len(np.unique(groups))} distinct"
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
        if stratify is not None and not len(stratify):
            stratify = None
        train_idx, rest = _split(index, holdout, stratify, spec.seed)
        if spec.test and spec.validation:
            sub = [stratify[i] for i in rest] if stratify is not None else None
            if isinstance(stratify, np.ndarray):
                sub = stratify[rest]
            val_idx, test_idx = _split(rest, spec.test / holdout, sub, spec.seed)
        else:
            val_idx, test_idx = (rest, rest[:0]) if spec.validation else (rest[:0], rest)
    if not len(train_idx):
        raise DataError(f"{recipe.data.source.path}: too few records to split ({n})")
    return {"train": train_idx, "validation": val_idx, "test": test_idx}


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


def _split(index: np.ndarray, fraction: float, stratify: Any, seed: int):
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
    if not labels:
        return train
    keys = [r["label"] for r in train]
    positions = balanced_positions(recipe.data.balance, keys, recipe.data.split.seed)
    return train if positions is None else [train[i] for i in positions]


def _class_weights(train: list[Record], labels: list[str]) -> list[float]:
    """Inverse-frequency weights (sklearn's 'balanced' formula)."""
    return _class_weights_of(np.array([labels.index(r["label"]) for r in train]), labels)


def _class_weights_of(y: np.ndarray, labels: list[str]) -> list[float]:
    from sklearn.utils.class_weight import compute_class_weight

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
