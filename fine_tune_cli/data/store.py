"""The content-addressed prepared-data store.

`$FTC_CACHE_DIR/prepared/<hash>/` holds a manifest, the tokenizer and per-split numpy
arrays (flat token ids + offsets) that are memory-mapped at training time. A dir is only
visible under its hash once complete (written to a temp dir, then renamed), so a crash
never leaves a half-written dataset that looks usable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fine_tune_cli import formats
from fine_tune_cli.errors import DataError, IntegrityError, OutputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("ftc")

# Enters every data hash. Never bump it for a layout change (that is
# formats.CURRENT["prepared"]): a new value orphans every cache entry and makes resume refuse
# every checkpoint (its data hash no longer matches).
HASH_SCHEME = 1
MANIFEST = "manifest.json"
COMPLETE = "COMPLETE"


def cache_root(cache_dir: str | None) -> Path:
    """data.cache_dir, else $FTC_CACHE_DIR, else $XDG_CACHE_HOME/fine_tune_cli, else
    ~/.cache/fine_tune_cli (the XDG base-directory default)."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("FTC_CACHE_DIR"):
        return Path(os.environ["FTC_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fine_tune_cli"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_hash(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class PreparedSplit:
    """One split: example i is input_ids[offsets[i]:offsets[i+1]] (memory-mapped)."""

    name: str
    input_ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray | None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def texts(self, root: Path) -> list[str]:
        path = root / self.name / "texts.jsonl"
        if not path.is_file():
            return []
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line)["text"] for line in fh]


@dataclass
class PreparedDataset:
    path: Path
    manifest: dict[str, Any]
    splits: dict[str, PreparedSplit]

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.get("labels") or [])

    @property
    def hash(self) -> str:
        return self.manifest["hash"]

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        from fine_tune_cli.data.tokenizers import load_tokenizer

        return load_tokenizer(self.path / "tokenizer")

    @cached_property
    def processor(self) -> Any:
        """What is saved beside a model so it can be used on its own: the tokenizer, or
        for image data the image processor (preprocessor_config.json)."""
        folder = self.path / "processor"
        if not folder.is_dir():
            return self.tokenizer
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)

    def default_eval_split(self) -> str:
        return "test" if len(self.splits.get("test", ())) else "validation"


def write_split(
    root: Path,
    name: str,
    examples: list[list[int]],
    labels: list[int] | None,
    texts: list[str] | None,
    extra: dict[str, np.ndarray] | None = None,
) -> dict:
    """Write one split's arrays; returns its manifest entry."""
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    lengths = np.fromiter((len(e) for e in examples), dtype=np.int64, count=len(examples))
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for e in examples for t in e), dtype=np.int32, count=int(offsets[-1]))
    np.save(out / "input_ids.npy", flat)
    np.save(out / "offsets.npy", offsets)
    if labels is not None:
        np.save(out / "labels.npy", np.asarray(labels, dtype=np.int64))
    for key, arr in (extra or {}).items():
        np.save(out / f"{key}.npy", arr)
    if texts is not None:
        with open(out / "texts.jsonl", "w", encoding="utf-8") as fh:
            for text in texts:
                fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return {"examples": len(examples), "tokens": int(offsets[-1])}


def _load_split(root: Path, name: str) -> PreparedSplit:
    folder = root / name
    labels = folder / "labels.npy"
    extra = {
        p.stem: np.load(p, mmap_mode="r")
        for p in folder.glob("*.npy")
        if p.stem not in ("input_ids", "offsets", "labels")
    }
    return PreparedSplit(
        name=name,
        input_ids=np.load(folder / "input_ids.npy", mmap_mode="r"),
        offsets=np.load(folder / "offsets.npy"),
        labels=np.load(labels) if labels.is_file() else None,
        extra=extra,
    )


def _file_list(root: Path) -> dict[str, dict[str, Any]]:
    """Every data file of a prepared dir: sha256, size and mtime (the markers aside)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in (MANIFEST, COMPLETE) or rel.startswith("."):
            continue
        stat = path.stat()
        out[rel] = {
            "sha256": sha256_file(path),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    return out


def write_prepared_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """The manifest of a prepared dir being built, stamped with the current format; it
    lists every file written so far (call it last) so damage is found on open."""
    manifest = {**manifest, "files": _file_list(root)}
    text = json.dumps(formats.stamp("prepared", manifest), indent=2, ensure_ascii=False)
    (root / MANIFEST).write_text(text)


def damage(root: Path) -> str | None:
    """What is wrong with a complete prepared dir's files (None: as built). Sizes are
    always compared; a file whose mtime moved is also hashed, so a same-size edit is found
    too. Dirs written before files were listed are trusted."""
    try:
        files = json.loads((root / MANIFEST).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return f"{MANIFEST} is unreadable"
    if not isinstance(files, dict):
        return None
    for rel, entry in files.items():
        path = root / rel
        try:
            stat = path.stat()
        except OSError:
            return f"{rel} is missing"
        if stat.st_size != entry.get("bytes"):
            return f"{rel} has {stat.st_size} bytes, not the {entry.get('bytes')} it was built with"
        if stat.st_mtime_ns != entry.get("mtime_ns") and sha256_file(path) != entry.get("sha256"):
            return f"{rel} was changed after it was built (sha256 differs)"
    return None


def entry_ready(final: Path, *, warn: bool = True) -> bool:
    """True when `final` is a complete prepared dir with its files as built. A damaged one
    (a file truncated, edited or deleted) is derived data: say so and return False, so the
    caller rebuilds it (under the entry lock) instead of training on it."""
    if not (final / COMPLETE).is_file():
        return False
    problem = damage(final)
    if problem is None:
        return True
    if warn:
        log.warning(
            "%s: prepared data is damaged (%s); rebuilding it from the source", final, problem
        )
    return False


def read_prepared_manifest(path: Path) -> dict[str, Any]:
    """A prepared dir's manifest migrated to the current format (a newer one: exit 2)."""
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError):
        raise DataError(
            f"{file}: unreadable prepared-data manifest; rerun `ftc prepare --force`"
        ) from None
    if not isinstance(manifest, dict):
        raise DataError(f"{file}: not a prepared-data manifest; rerun `ftc prepare --force`")
    return formats.upgrade("prepared", manifest, file)


def open_prepared(path: Path, expected_hash: str | None = None) -> PreparedDataset:
    """Open a complete prepared dir; refuse one whose hash is not the recipe's."""
    if not (path / COMPLETE).is_file():
        raise DataError(f"{path}: prepared data is incomplete; rerun `ftc prepare --force`")
    manifest = read_prepared_manifest(path)
    if expected_hash and manifest.get("hash") != expected_hash:
        raise IntegrityError(
            f"{path}: prepared data was built for another recipe (hash"
            f" {manifest.get('hash', '?')[:12]}, recipe wants {expected_hash[:12]});"
            " rerun `ftc prepare`"
        )
    splits = {name: _load_split(path, name) for name in manifest["splits"]}
    return PreparedDataset(path=path, manifest=manifest, splits=splits)


def publish(tmp: Path, final: Path) -> None:
    """Make a fully written temp dir visible under its final name (atomic rename)."""
    (tmp / COMPLETE).write_text("ok\n")
    try:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (final / COMPLETE).is_file():
            return  # another process published the same content first
        raise OutputError(f"{final}: cannot write prepared data ({exc.strerror})") from None
