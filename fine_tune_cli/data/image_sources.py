"""Image sources for `prepare`: an image folder, a csv/jsonl manifest, a numpy .npz file
or scikit-learn's bundled `digits` set.

Records are `{id, image, label, group, source}` (+ `split` for a folder with train/,
validation/ and test/ sub-folders); `image` is a uint8 (height, width, channels) array
with 1 (grey) or 3 (RGB) channels and `source` says where the image came from (file path
relative to the source, or `name[i]`), which the reports show.

A corrupt or unreadable image is one DataError line naming the file (exit 3), or, with
`data.source.on_bad_image: skip`, skipped and counted in a warning.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fine_tune_cli.data.sources import SOURCES, Source, jsonl_objects
from fine_tune_cli.data.steps import Record
from fine_tune_cli.errors import DataError
from fine_tune_cli.recipe import SourceSpec

log = logging.getLogger("ftc")

IMAGE_FORMATS = ("imagefolder", "image_manifest", "npz", "digits")
IMAGE_EXTENSIONS = {
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
}  # fmt: skip
SPLIT_FOLDERS = {
    "train": ("train",),
    "validation": ("validation", "val", "valid"),
    "test": ("test",),
}
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


def image_format(spec: SourceSpec) -> str:
    """The image format of a source; `auto` is read from the path (folder, .npz, manifest)."""
    if spec.format != "auto":
        return spec.format
    path = Path(spec.path or "")
    if path.is_dir():
        return "imagefolder"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in MANIFEST_SUFFIXES:
        return "image_manifest"
    raise DataError(
        f"{spec.path}: cannot tell the image source from the path; set data.source.format"
        " (imagefolder, image_manifest, npz or digits)"
    )


def read_images(spec: SourceSpec, *, need_label: bool) -> list[Record]:
    """Records of an image source (every image decoded now, so a bad file fails here)."""
    return SOURCES.get(image_format(spec))(spec, need_label)


def image_source(read: Source) -> Source:
    """An image format's reader, with the checks every image source shares."""

    def source(spec: SourceSpec, need_label: bool) -> list[Record]:
        return _checked(spec, read(spec, need_label), need_label)

    return source


def _checked(spec: SourceSpec, records: list[Record], need_label: bool) -> list[Record]:
    if not records:
        raise DataError(f"{spec.path}: no images")
    if need_label:
        unlabelled = next((r for r in records if r["label"] is None), None)
        if unlabelled is not None:
            raise DataError(
                f"{spec.path}: image {unlabelled['source']} has no label; classification"
                " needs one per image (folders: root/<class_name>/*.png; manifests: a label)"
            )
    return records


def source_fingerprint(spec: SourceSpec) -> str:
    """Content hash of everything an image source reads (part of the prepared-data hash)."""
    fmt = image_format(spec)
    digest = hashlib.sha256(fmt.encode())
    if fmt == "digits":
        data = _load_digits()
        digest.update(np.ascontiguousarray(data.images).tobytes())
        digest.update(np.ascontiguousarray(data.target).tobytes())
        return digest.hexdigest()
    path = _existing(spec)
    if fmt == "npz":
        digest.update(_sha256(path).encode())
        return digest.hexdigest()
    if fmt == "image_manifest":
        digest.update(_sha256(path).encode())
        rows = manifest_rows(spec, need_label=False)
    else:
        rows = _folder_files(spec)
    for row in rows:
        digest.update(f"{row['source']}\0{row.get('label')}\0{row.get('split')}\0".encode())
        file = row["file"]
        digest.update(_sha256(file).encode() if file.is_file() else b"missing")
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    from fine_tune_cli.data.store import sha256_file

    try:
        return sha256_file(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _existing(spec: SourceSpec) -> Path:
    path = Path(spec.path or "")
    if not path.exists():
        raise DataError(f"{spec.path}: data source not found (set data.source.path)")
    return path


# --------------------------------------------------------------------------- decoding
def decode_image(data: bytes | Path) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 1) for grey images, (H, W, 3) otherwise,
    upright: the EXIF orientation tag is applied (phone photos are stored sideways with
    a tag saying so). The one decoder behind prepare, `eval --data` and predict."""
    from PIL import Image, ImageOps

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as im:
        im.load()  # decode now: a truncated or corrupt file fails here, not in training
        grey = im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
        upright = ImageOps.exif_transpose(im)
        converted = upright.convert("L" if grey else "RGB")
    array = np.asarray(converted, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def decode_file(file: Path) -> tuple[np.ndarray | None, str]:
    """(image, "") or (None, why it cannot be read): a missing, truncated or corrupt file."""
    try:
        return decode_image(file), ""
    except FileNotFoundError:
        return None, "file not found"
    except Exception as exc:  # decoders raise many types (OSError, SyntaxError, ...)
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _decode_all(spec: SourceSpec, rows: list[dict[str, Any]]) -> list[Record]:
    records: list[Record] = []
    bad: list[str] = []
    for row in rows:
        if spec.limit is not None and len(records) >= spec.limit:
            break
        file: Path = row["file"]
        image, reason = decode_file(file)
        if image is not None:
            records.append(
                {
                    "id": len(records),
                    "image": image,
                    "label": row.get("label"),
                    "group": row.get("group"),
                    "source": row["source"],
                    **({"split": row["split"]} if "split" in row else {}),
                }
            )
            continue
        if spec.on_bad_image == "fail":
            raise DataError(
                f"{file}: corrupt or unreadable image ({reason}); fix or remove it, or set"
                " data.source.on_bad_image: skip"
            )
        bad.append(f"{file} ({reason})")
    if bad:
        log.warning(
            "skipped %d unreadable image(s) (data.source.on_bad_image: skip); first: %s",
            len(bad),
            bad[0],
        )
    return records


# --------------------------------------------------------------------------- folder
def images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_files(spec: SourceSpec) -> list[dict[str, Any]]:
    """root/<class>/*.png (labelled), or root/*.png (unlabelled); with split_folders,
    root/train/<class>/..., root/validation/<class>/..., root/test/<class>/..."""
    root = _existing(spec)
    if not root.is_dir():
        raise DataError(f"{spec.path}: format imagefolder needs a directory")
    if not spec.split_folders:
        return _class_folder_files(root, root, split=None)
    rows: list[dict[str, Any]] = []
    names = {p.name.lower(): p for p in _subdirs(root)}
    if "train" not in names:
        raise DataError(
            f"{root}: split_folders needs a train/ folder (found: {', '.join(names) or 'none'})"
        )
    for split, aliases in SPLIT_FOLDERS.items():
        folder = next((names[a] for a in aliases if a in names), None)
        if folder is not None:
            rows += _class_folder_files(folder, root, split=split)
    return rows


def _class_folder_files(folder: Path, root: Path, split: str | None) -> list[dict[str, Any]]:
    classes = _subdirs(folder)
    rows: list[dict[str, Any]] = []
    if classes:
        loose = [
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if loose:
            log.warning(
                "%s: %d image(s) outside the class folders ignored (e.g. %s)",
                folder,
                len(loose),
                loose[0].name,
            )
        for class_dir in classes:
            for file in images_under(class_dir):
                rows.append(_row(file, root, class_dir.name, split))
    else:
        rows = [_row(file, root, None, split) for file in images_under(folder)]
    if not rows:
        raise DataError(
            f"{folder}: no images found (expected {folder}/<class_name>/*.png|jpg;"
            f" extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return rows


def _row(file: Path, root: Path, label: str | None, split: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "file": file,
        "source": file.relative_to(root).as_posix(),
        "label": label,
        "group": None,
    }
    if split is not None:
        row["split"] = split
    return row


# --------------------------------------------------------------------------- manifest
def manifest_rows(spec: SourceSpec, need_label: bool) -> list[dict[str, Any]]:
    """`path,label` rows of a csv/jsonl manifest; relative paths resolve against its folder."""
    path = _existing(spec)
    if path.is_dir():
        raise DataError(f"{spec.path}: format image_manifest needs a csv or jsonl file")
    kind = MANIFEST_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{spec.path}: an image manifest must be .csv or .jsonl (one image path per row)"
        )
    try:
        with path.open(encoding=spec.encoding, newline="") as handle:
            raw = list(_csv_rows(handle, spec) if kind == "csv" else _jsonl_rows(handle, spec))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{spec.path}: not valid {spec.encoding} text ({exc.reason}); set data.source.encoding"
        ) from None
    except LookupError:
        raise DataError(f"{spec.path}: unknown encoding '{spec.encoding}'") from None
    except OSError as exc:
        raise DataError(f"{spec.path}: cannot read manifest ({exc.strerror or exc})") from None
    rows = []
    for where, image, label, group in raw:
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{where}: '{spec.image}' must be an image file path")
        if need_label and (label is None or label == ""):
            raise DataError(f"{where}: empty label in '{spec.label}' (every image needs a label)")
        file = Path(image).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        rows.append(
            {
                "file": file,
                "source": image,
                "label": None if label in (None, "") else str(label),
                "group": None if group in (None, "") else str(group),
            }
        )
    return rows


def _missing(where: str, key: str, have: list[str], field: str) -> DataError:
    return DataError(
        f"{where}: missing '{key}' (have: {', '.join(have) or 'none'}); set data.source.{field}"
    )


def _csv_rows(handle: Any, spec: SourceSpec) -> Iterator[tuple[str, Any, Any, Any]]:
    reader = csv.DictReader(handle)
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    where = f"{spec.path}: header"
    if spec.image not in columns:
        raise _missing(where, spec.image, columns, "image")
    if spec.group and spec.group not in columns:
        raise _missing(where, spec.group, columns, "group")
    label_col = spec.label if spec.label in columns else None
    try:
        for row_no, row in enumerate(reader, start=2):
            yield (
                f"{spec.path}: row {row_no}",
                row[spec.image],
                row[label_col] if label_col else None,
                row[spec.group] if spec.group else None,
            )
    except csv.Error as exc:
        raise DataError(f"{spec.path}: line {reader.line_num}: malformed CSV ({exc})") from None


def _jsonl_rows(handle: Any, spec: SourceSpec) -> Iterator[tuple[str, Any, Any, Any]]:
    for where, obj in jsonl_objects(handle, spec.path):
        if spec.image not in obj:
            raise _missing(where, spec.image, list(obj), "image")
        if spec.group and spec.group not in obj:
            raise _missing(where, spec.group, list(obj), "group")
        label = obj.get(spec.label) if spec.label else None
        if label is not None and not isinstance(label, str | int | float | bool):
            raise DataError(f"{where}: label must be a string or number")
        yield where, obj[spec.image], label, obj.get(spec.group) if spec.group else None


# --------------------------------------------------------------------------- arrays
def _read_npz(spec: SourceSpec, need_label: bool) -> list[Record]:
    """Arrays `images` (N, H, W), (N, H, W, C) or (N, C, H, W) and optional `labels` (N)."""
    path = _existing(spec)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{spec.path}: cannot read npz file ({reason})") from None
    if "images" not in arrays:
        raise DataError(
            f"{spec.path}: no 'images' array in the npz file (arrays: {', '.join(arrays)})"
        )
    images = _as_hwc(arrays["images"], spec.path or "")
    labels = arrays.get("labels")
    if labels is None and need_label:
        raise DataError(f"{spec.path}: no 'labels' array in the npz file (classification)")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images):
            raise DataError(f"{spec.path}: {len(images)} images but {len(labels)} labels")
    name = Path(spec.path or "").name
    n = len(images) if spec.limit is None else min(spec.limit, len(images))
    return [
        {
            "id": i,
            "image": np.ascontiguousarray(images[i]),
            "label": _label_text(labels[i]) if labels is not None else None,
            "group": None,
            "source": f"{name}[{i}]",
        }
        for i in range(n)
    ]


def _label_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def _as_hwc(images: np.ndarray, shown: str) -> np.ndarray:
    """(N, H, W[, C]) or (N, C, H, W) numbers -> uint8 (N, H, W, C) with C in (1, 3)."""
    if images.ndim == 3:
        images = images[..., None]
    elif images.ndim == 4 and images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # channels first
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{shown}: 'images' has shape {images.shape}; expected (N, H, W), (N, H, W, C)"
            " or (N, C, H, W) with 1 or 3 channels"
        )
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "iuf" or images.dtype == np.bool_:
        raise DataError(f"{shown}: 'images' must hold numbers, not {images.dtype}")
    low, high = float(images.min()), float(images.max())
    if images.dtype.kind == "f" and low >= 0 and high <= 1:
        return np.round(images * 255).astype(np.uint8)
    if low >= 0 and high <= 255:
        return np.round(images).astype(np.uint8)
    raise DataError(
        f"{shown}: 'images' values lie in [{low:g}, {high:g}]; expected uint8 0..255 or"
        " floats in [0, 1]"
    )


def _load_digits() -> Any:
    from sklearn.datasets import load_digits

    return load_digits()  # ships inside scikit-learn: no download


def _read_digits(spec: SourceSpec) -> list[Record]:
    """scikit-learn's 1,797 real 8x8 grey images of handwritten digits (values 0..16)."""
    data = _load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)[..., None]
    n = len(images) if spec.limit is None else min(spec.limit, len(images))
    return [
        {
            "id": i,
            "image": images[i],
            "label": str(int(data.target[i])),
            "group": None,
            "source": f"digits[{i}]",
        }
        for i in range(n)
    ]


SOURCES.add("imagefolder", image_source(lambda spec, _: _decode_all(spec, _folder_files(spec))))
SOURCES.add(
    "image_manifest",
    image_source(lambda spec, need_label: _decode_all(spec, manifest_rows(spec, need_label))),
)
SOURCES.add("npz", image_source(_read_npz))
SOURCES.add("digits", image_source(lambda spec, _: _read_digits(spec)))
