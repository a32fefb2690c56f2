"""`ftc predict`: label new texts or images with any exported model (hf, onnx, pt2,
int8, pruned) or a run's best/, through the same cleaning steps and
tokenizer (texts) or image steps and normalisation (images) as training and eval.

Every input row gets exactly one prediction, in input order. Steps that drop records at
prepare time (dedupe, filter_length) do not drop inputs here: such a row is predicted
from its cleaned text and flagged with `"filtered": "<step>"`, so a caller can tell it
lies outside what the model was trained on. An image that cannot be decoded fails the
whole command (exit 3, naming the file): nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from fine_tune_cli.data.sources import STDIN
from fine_tune_cli.data.steps import Record
from fine_tune_cli.errors import DataError, OutputError, RecipeError
from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")

BATCH_SIZE = 64


def run_predict(model_dir: str, source: str, *, out: str, json_mode: bool) -> dict[str, Any]:
    from fine_tune_cli.export.load import load_exported
    from fine_tune_cli.tasks import task_for

    if out == STDIN and json_mode:
        raise RecipeError("--out - writes predictions to stdout; it cannot be combined with --json")
    if source != STDIN and not Path(source).exists():
        raise DataError(f"{source}: input not found")
    loaded = load_exported(Path(model_dir))
    task = task_for(loaded.recipe.model)
    if not task.predictable:
        raise RecipeError(
            f"{loaded.root}: ftc predict labels inputs with a classification model"
            f" (this one is {loaded.recipe.model.family}/{loaded.recipe.model.task})"
        )
    predictions = task.predict(loaded, source)
    rows = predictions.rows
    if out == STDIN:
        _write_lines(sys.stdout, rows)
        sys.stdout.flush()
    else:
        write_jsonl(Path(out), rows)
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
        "label_counts": predictions.label_counts,
        "filtered": filtered,
    }


# --------------------------------------------------------------------------- inputs
def read_inputs(source: str, recipe: Recipe) -> list[Record]:
    """Rows of a csv/jsonl/txt file (by extension) or stdin (jsonl when the first line is
    a JSON object, else one text per line), using the recipe's text column; labels,
    groups and the recipe's row limit do not apply."""
    from fine_tune_cli.data.sources import read_input, read_source

    base = recipe.data.source.model_copy(
        update={"format": "auto", "label": None, "group": None, "limit": None}
    )

    def read(path: str, fmt: str) -> list[Record]:
        return read_source(base.model_copy(update={"path": path, "format": fmt}), need_label=False)

    return read_input(source, read, trust_extension=True)


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
    from fine_tune_cli.console import Progress
    from fine_tune_cli.data.batching import eval_batches
    from fine_tune_cli.data.prepare import _encode
    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.export.base import input_names
    from fine_tune_cli.tasks import build_task

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
    batches = eval_batches(split, BATCH_SIZE)  # length-sorted: little padding
    with Progress(len(batches), unit="batch", name="predict") as progress:
        for idx in batches:
            batch = task.collate(split, idx)
            logits = np.asarray(loaded.run({k: batch[k] for k in input_names(batch)})["logits"])
            probs[idx] = _softmax(logits.astype(np.float64))
            progress.advance(counts={"inputs": len(idx)})
    return probs


# --------------------------------------------------------------------------- images
def image_inputs(source: str, recipe: Recipe) -> list[Record]:
    """`{id, file}` per image, in order: a single image file (id: its name), a folder
    (recursive, sorted; id: the path relative to it; non-image files skipped as the
    imagefolder source does), a csv/jsonl manifest with the recipe's image column (id:
    the row's index; paths relative to the manifest) or stdin (one path per line; id: the
    path as given). Files are decoded later, batch by batch."""
    from fine_tune_cli.data.image_sources import (
        IMAGE_EXTENSIONS,
        MANIFEST_SUFFIXES,
        images_under,
        manifest_rows,
    )

    if source == STDIN:
        paths = [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
        rows = [{"id": p, "file": Path(p).expanduser()} for p in paths]
        where = "<stdin>"
    else:
        path = Path(source)
        where = source
        suffix = path.suffix.lower()
        if path.is_dir():
            rows = [{"id": f.relative_to(path).as_posix(), "file": f} for f in images_under(path)]
        elif suffix in IMAGE_EXTENSIONS:
            rows = [{"id": path.name, "file": path}]
        elif suffix in MANIFEST_SUFFIXES:
            spec = recipe.data.source.model_copy(
                update={"path": source, "format": "image_manifest", "label": None, "group": None}
            )
            try:
                listed = manifest_rows(spec, need_label=False)
            except DataError as exc:  # the column comes with the model: no key to set here
                hint = " (the model's recipe names this column of image paths)"
                raise DataError(exc.message.replace("; set data.source.image", hint)) from None
            rows = [{"id": i, "file": row["file"]} for i, row in enumerate(listed)]
        else:
            raise DataError(
                f"{source}: not an image ({', '.join(sorted(IMAGE_EXTENSIONS))}), a folder of"
                " images or a csv/jsonl manifest of image paths"
            )
    if not rows:
        raise DataError(f"{where}: no images")
    return rows


def _inference_steps(recipe: Recipe) -> list[tuple[Any, Any]]:
    """data.steps as they apply to one new image: the deterministic steps as they are; a
    random_crop becomes a center crop of the same size, hflip and rotate are skipped
    (data.augment, train-only, never applies)."""
    from fine_tune_cli.data.image_steps import CropParams
    from fine_tune_cli.data.steps import STEPS

    steps = []
    for spec in recipe.data.steps:
        if spec.name == "random_crop":
            steps.append((STEPS.get("center_crop"), CropParams(size=spec.parsed_params().size)))
        elif spec.name not in ("hflip", "rotate", "normalize"):
            steps.append((STEPS.get(spec.name), spec.parsed_params()))
    return steps


def image_geometry(root: Path) -> dict[str, Any]:
    """Side, channels and normalisation of the model's inputs, from the image processor
    saved with it (preprocessor_config.json: written by prepare, carried by best/ and
    every export), in the form the prepared data's manifest gives them to ImageBatches."""
    try:
        config = json.loads((root / "preprocessor_config.json").read_text())
        size = config["size"]
        side = int(size["height"] if isinstance(size, dict) else size)
        mean, std = list(config["image_mean"]), list(config["image_std"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecipeError(
            f"{root}: cannot read preprocessor_config.json ({exc}); re-export the model"
        ) from None
    if not config.get("do_normalize", True):
        mean, std = [0.0] * len(mean), [1.0] * len(std)
    return {"size": side, "channels": len(mean), "mean": mean, "std": std}


def predict_image_probs(loaded: Any, rows: list[Record]) -> np.ndarray:
    """Class probabilities, one row per image: decode, the recipe's steps, the prepared
    data's size fitting (fit_image) and the eval-time scaling (ImageBatches)."""
    from fine_tune_cli.console import Progress

    recipe = loaded.recipe
    info = image_geometry(loaded.root)
    to_grey: list[str] = []
    probs = np.empty((len(rows), len(loaded.labels)), dtype=np.float64)
    batches = -(-len(rows) // BATCH_SIZE)
    with Progress(batches, unit="batch", name="predict") as progress:
        for start in range(0, len(rows), BATCH_SIZE):
            chunk = rows[start : start + BATCH_SIZE]
            pixels = image_pixels(recipe, info, chunk, to_grey)
            logits = loaded.run({"pixel_values": scaled_pixels(recipe, info, pixels)})["logits"]
            probs[start : start + len(chunk)] = _softmax(np.asarray(logits, dtype=np.float64))
            progress.advance(counts={"images": len(chunk)})
    warn_grey(to_grey)
    return probs


def image_pixels(
    recipe: Recipe, info: dict[str, Any], rows: list[Record], to_grey: list[str]
) -> np.ndarray:
    """uint8 (N, C, S, S) pixels of the rows' image files as the model sees them before
    scaling: decoded, the recipe's steps, fitted to the prepared size (fit_image). RGB files
    given to a grey model are converted and listed in `to_grey`."""
    from fine_tune_cli.data.image_sources import decode_file
    from fine_tune_cli.data.images import fit_image
    from fine_tune_cli.data.steps import StepContext

    steps = _inference_steps(recipe)
    ctx = StepContext(seed=recipe.data.split.seed)
    size, channels = info["size"], info["channels"]
    records: list[Record] = []
    for row in rows:
        image, reason = decode_file(row["file"])
        if image is None:
            raise DataError(f"{row['file']}: corrupt or unreadable image ({reason})")
        records.append({"id": row["id"], "image": image})
    for step, params in steps:
        records = step.fn(records, params, ctx)
    pixels = np.zeros((len(records), channels, size, size), dtype=np.uint8)
    for j, (row, record) in enumerate(zip(rows, records, strict=True)):
        image = record["image"]
        if channels == 1 and image.shape[2] == 3:
            to_grey.append(str(row["file"]))
            image = _luma(image)
        pixels[j] = fit_image(image, size, channels).transpose(2, 0, 1)
    return pixels


def scaled_pixels(recipe: Recipe, info: dict[str, Any], pixels: np.ndarray) -> Any:
    """The model's float pixel_values tensor for uint8 (N, C, S, S) pixels (ImageBatches'
    eval-time scaling: never augmented)."""
    from fine_tune_cli.data.image_batches import ImageBatches
    from fine_tune_cli.data.store import PreparedSplit

    batches = ImageBatches(recipe, SimpleNamespace(manifest={"images": info}))
    split = PreparedSplit(
        name="predict",
        input_ids=np.zeros(0, dtype=np.int32),
        offsets=np.zeros(len(pixels) + 1, dtype=np.int64),
        labels=None,
        extra={"pixels": pixels},
    )
    return batches.pixel_values(split, np.arange(len(pixels)))


def warn_grey(to_grey: list[str]) -> None:
    if to_grey:
        log.warning(
            "%d RGB image(s) converted to grey for a model trained on grey images (e.g. %s)",
            len(to_grey),
            to_grey[0],
        )


def _luma(image: np.ndarray) -> np.ndarray:
    """RGB -> grey as the convert_channels step does (PIL's ITU-R 601 luma)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).convert("L"), dtype=np.uint8)[:, :, None]


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
