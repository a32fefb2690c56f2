"""`ftc predict`: label new texts with any exported model (hf, onnx, torchscript, int8,
pruned) or a run's best/, through the same cleaning steps and tokenizer as training.

Every input row gets exactly one prediction, in input order. Steps that drop records at
prepare time (dedupe, filter_length) do not drop inputs here: such a row is predicted
from its cleaned text and flagged with `"filtered": "<step>"`, so a caller can tell it
lies outside what the model was trained on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from fine_tune_cli.data.steps import Record
from fine_tune_cli.errors import DataError, OutputError, RecipeError
from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")

STDIN = "-"
BATCH_SIZE = 64


def run_predict(model_dir: str, source: str, *, out: str, json_mode: bool) -> dict[str, Any]:
    from fine_tune_cli.export.load import load_exported
    from fine_tune_cli.models.registry import FAMILIES

    if out == STDIN and json_mode:
        raise RecipeError("--out - writes predictions to stdout; it cannot be combined with --json")
    if source != STDIN and not Path(source).is_file():
        raise DataError(f"{source}: input file not found")
    loaded = load_exported(Path(model_dir))
    recipe = loaded.recipe
    if (
        recipe.model.task != "classification"
        or FAMILIES.get(recipe.model.family).tokenizer_kind is None
    ):
        raise RecipeError(
            f"{loaded.root}: ftc predict labels texts with a text classification model"
            f" (this one is {recipe.model.family}/{recipe.model.task})"
        )
    records = read_inputs(source, recipe)
    records = clean(records, recipe)
    probs = predict_probs(loaded, [r["text"] for r in records])
    rows = prediction_rows(records, probs, loaded.labels)
    if out == STDIN:
        _write_lines(sys.stdout, rows)
        sys.stdout.flush()
    else:
        write_jsonl(Path(out), rows)
    counts = Counter(row["label"] for row in rows)
    filtered = sum(1 for row in rows if "filtered" in row)
    log.info(
        "predicted %d inputs with %s (%s)%s",
        len(rows),
        loaded.root,
        loaded.format,
        f"; {filtered} flagged as filtered by the training pipeline" if filtered else "",
    )
    return {
        "model_dir": str(loaded.root),
        "format": loaded.format,
        "input": source,
        "outputs": {"predictions": out},
        "count": len(rows),
        "label_counts": {label: counts.get(label, 0) for label in loaded.labels},
        "filtered": filtered,
    }


# --------------------------------------------------------------------------- inputs
def read_inputs(source: str, recipe: Recipe) -> list[Record]:
    """Rows of a csv/jsonl/txt file (by extension) or stdin (jsonl when the first line is
    a JSON object, else one text per line), using the recipe's text column; labels,
    groups and the recipe's row limit do not apply."""
    from fine_tune_cli.data.sources import EXTENSIONS, read_source

    base = recipe.data.source.model_copy(
        update={"format": "auto", "label": None, "group": None, "limit": None}
    )
    if source != STDIN:
        path = Path(source)
        suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
        known = bool(suffixes) and suffixes[-1] in EXTENSIONS
        fmt = "auto" if known else _sniff(path.read_bytes()[:4096])
        return read_source(
            base.model_copy(update={"path": source, "format": fmt}), need_label=False
        )
    data = sys.stdin.buffer.read()
    fd, tmp = tempfile.mkstemp(prefix="ftc-stdin-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        spec = base.model_copy(update={"path": tmp, "format": _sniff(data)})
        try:
            return read_source(spec, need_label=False)
        except DataError as exc:
            raise DataError(exc.message.replace(tmp, "<stdin>")) from None
    finally:
        os.unlink(tmp)


def _head(path: Path, size: int = 4096) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(size)
    except OSError as exc:
        raise DataError(f"{path}: cannot read input ({exc.strerror})") from None


def _sniff(head: bytes) -> str:
    import gzip

    if head[:2] == b"\x1f\x8b":
        try:
            head = gzip.decompress(head)
        except (OSError, EOFError):
            head = b""  # a truncated member: the start is enough for most files
    first = next((line for line in head.splitlines() if line.strip()), b"")
    return "jsonl" if first.lstrip().startswith(b"{") else "txt"


def clean(records: list[Record], recipe: Recipe) -> list[Record]:
    """The recipe's pipeline steps, but a record a step would drop is kept (flagged)."""
    from fine_tune_cli.data.steps import STEPS, StepContext

    ctx = StepContext(seed=recipe.data.split.seed)
    for spec in recipe.data.steps:
        kept: dict[int, Record] = {}
        for record in STEPS.get(spec.name).fn(records, spec.parsed_params(), ctx):
            kept.setdefault(record["id"], record)
        records = [
            kept.get(r["id"]) or {**r, "filtered": r.get("filtered") or spec.name} for r in records
        ]
    return records


# --------------------------------------------------------------------------- model
def predict_probs(loaded: Any, texts: list[str]) -> np.ndarray:
    """Class probabilities, one row per text, through the task's own batching."""
    from fine_tune_cli.data.batching import eval_batches
    from fine_tune_cli.data.prepare import _encode
    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.engine.run import build_task
    from fine_tune_cli.export.base import input_names

    ids = _encode(loaded.tokenizer, texts, loaded.recipe.data.max_length)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    split = PreparedSplit(name="predict", input_ids=flat, offsets=offsets, labels=None)
    # What build_task reads of a prepared dataset, from the model dir instead.
    view = SimpleNamespace(
        tokenizer=loaded.tokenizer,
        label_names=loaded.labels,
        manifest={"labels": loaded.labels, "class_weights": None},
        splits={},
        path=loaded.root,
    )
    task = build_task(loaded.recipe, view)
    probs = np.empty((len(texts), len(loaded.labels)), dtype=np.float64)
    for idx in eval_batches(split, BATCH_SIZE):  # length-sorted: little padding
        batch = task.collate(split, idx)
        logits = np.asarray(loaded.run({k: batch[k] for k in input_names(batch)})["logits"])
        probs[idx] = _softmax(logits.astype(np.float64))
    return probs


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def prediction_rows(
    records: list[Record], probs: np.ndarray, labels: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for record, p in zip(records, probs, strict=True):
        best = int(p.argmax())
        row: dict[str, Any] = {
            "id": record["id"],
            "label": labels[best],
            "score": round(float(p[best]), 6),
            "probs": {name: round(float(v), 6) for name, v in zip(labels, p, strict=True)},
        }
        if record.get("filtered"):
            row["filtered"] = record["filtered"]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- output
def _write_lines(fh: Any, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically: a killed or failed run never leaves a partial predictions file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            _write_lines(fh, rows)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"{path}: cannot write predictions ({exc.strerror})") from None
