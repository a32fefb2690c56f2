"""Encode and finish stages of the streaming prepare (see data/stream.py).

A *part* is one shard's output for every split: token ids (int32), one length per example,
label ids (int64) and texts, appended chunk by chunk. `finish` concatenates the parts of
all shards in shard order into the prepared arrays, so any number of shards or workers
gives the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from fine_tune_cli.data.stream import SPLITS, StreamEncoding

log = logging.getLogger("ftc")

COPY = 8 << 20  # bytes per read when concatenating part files


# --------------------------------------------------------------------------- tokenising
def backend_for(tok_dir: Path, encoding: StreamEncoding, max_length: int) -> Any:
    """The saved tokenizer's Rust backend (tokenizer.json) set up as HF's
    `tokenizer(texts, truncation=..., max_length=...)` sets it (same ids), without
    HF's per-call Python overhead (nor importing transformers in a worker)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    backend.no_padding()
    if encoding.truncate:
        backend.enable_truncation(max_length, stride=0, strategy="longest_first")
    else:
        backend.no_truncation()
    return backend


def tokenize(
    backend: Any, texts: list[str], special: bool, separator: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids, int64 length per text) for a chunk of texts; `separator` is
    appended after each text and counted in its length."""
    ids = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=special)]
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    if separator is not None:
        lengths += 1
        ids = [chain(x, (separator,)) for x in ids]
    flat = np.fromiter(chain.from_iterable(ids), np.int32, int(lengths.sum()))
    return flat, lengths


_WORKER: dict[str, Any] = {}


def _init_worker(tok_dir: str, encoding: StreamEncoding, max_length: int, sep: int | None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    _WORKER.update(
        backend=backend_for(Path(tok_dir), encoding, max_length),
        special=encoding.special_tokens,
        sep=sep,
    )


def _work(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return tokenize(_WORKER["backend"], texts, _WORKER["special"], _WORKER["sep"])


class Tokenise:
    """Tokenise chunks in order, in this process (workers=1) or in a pool of `workers`
    spawned processes with a bounded number of chunks in flight (flat memory)."""

    def __init__(
        self,
        tok_dir: Path,
        encoding: StreamEncoding,
        max_length: int,
        sep: int | None,
        workers: int,
    ):
        self.backend = backend_for(tok_dir, encoding, max_length)
        self.special, self.sep, self.workers = encoding.special_tokens, sep, workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            import multiprocessing

            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(str(tok_dir), encoding, max_length, sep),
            )

    def map(self, chunks: Iterator[Any]) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        """(chunk, ids, lengths) per chunk of (texts, payload), in input order."""
        if self.pool is None:
            for texts, payload in chunks:
                yield (payload, *tokenize(self.backend, texts, self.special, self.sep))
            return
        pending: list[tuple[Any, Future]] = []
        for texts, payload in chunks:
            pending.append((payload, self.pool.submit(_work, texts)))
            if len(pending) >= 2 * self.workers:
                payload0, fut = pending.pop(0)
                yield (payload0, *fut.result())
        for payload0, fut in pending:
            yield (payload0, *fut.result())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


# --------------------------------------------------------------------------- parts
class PartWriter:
    """One split of one shard's part: files appended chunk by chunk."""

    def __init__(self, folder: Path, encoding: StreamEncoding):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ids = open(folder / "ids.bin", "wb")  # noqa: SIM115
        self.lengths = open(folder / "lengths.bin", "wb")  # noqa: SIM115
        self.labels = open(folder / "labels.bin", "wb") if encoding.labels else None  # noqa: SIM115
        self.texts = (
            open(folder / "texts.jsonl", "w", encoding="utf-8")  # noqa: SIM115
            if encoding.texts
            else None
        )
        self.examples = self.tokens = 0

    def write(
        self, ids: np.ndarray, lengths: np.ndarray, labels: np.ndarray | None, texts: list[str]
    ) -> None:
        self.ids.write(ids.tobytes())
        self.lengths.write(lengths.tobytes())
        if self.labels is not None and labels is not None:
            self.labels.write(labels.astype(np.int64).tobytes())
        if self.texts is not None:
            self.texts.write(
                "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
            )
        self.examples += len(lengths)
        self.tokens += len(ids)

    def close(self) -> None:
        for fh in (self.ids, self.lengths, self.labels, self.texts):
            if fh is not None:
                fh.close()


# --------------------------------------------------------------------------- finish
def _concat(parts: list[Path], name: str, out: Any) -> int:
    """Append every part's file `name` to the open file `out`; bytes written."""
    total = 0
    for part in parts:
        with open(part / name, "rb") as fh:
            while block := fh.read(COPY):
                out.write(block)
                total += len(block)
    return total


def _npy_from_parts(path: Path, parts: list[Path], name: str, dtype: Any) -> int:
    """An .npy (the bytes np.save writes) whose data is the parts' files concatenated."""
    item = np.dtype(dtype).itemsize
    n = sum((p / name).stat().st_size for p in parts) // item
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(
            out,
            {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
             "shape": (n,)},
        )  # fmt: skip
        _concat(parts, name, out)
    return n


def finish_examples(
    out: Path, name: str, parts: list[Path], encoding: StreamEncoding, label_names: list[str]
) -> dict[str, Any]:
    """A split of one sequence per example: input_ids, offsets, labels, texts."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    tokens = _npy_from_parts(folder / "input_ids.npy", parts, "ids.bin", np.int32)
    lengths = np.concatenate(
        [np.fromfile(p / "lengths.bin", dtype=np.int64) for p in parts] or [np.zeros(0, np.int64)]
    )
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(folder / "offsets.npy", offsets)
    info: dict[str, Any] = {"examples": len(lengths), "tokens": tokens}
    if encoding.labels:
        labels = np.concatenate([np.fromfile(p / "labels.bin", dtype=np.int64) for p in parts])
        np.save(folder / "labels.npy", labels)
        counts = np.bincount(labels, minlength=len(label_names))
        info["label_counts"] = {k: int(c) for k, c in zip(label_names, counts, strict=True)}
    if encoding.texts:
        with open(folder / "texts.jsonl", "wb") as fh:
            _concat(parts, "texts.jsonl", fh)
    return info


def finish_packed(
    out: Path, name: str, parts: list[Path], block: int, wrap: tuple[int, int] | None
) -> dict[str, Any]:
    """Cut the parts' joined token stream into blocks of `block` ids, reading and writing
    in pieces (never the whole stream in memory or mapped). With `wrap=(cls, sep)` each
    block holds block-2 corpus tokens between them. The tail shorter than a block is
    dropped, unless it is the split's only data."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    total = sum((p / "ids.bin").stat().st_size for p in parts) // 4
    body = block - 2 if wrap else block
    n_blocks = total // body
    keep_tail = n_blocks == 0 and total > 0
    used = total if keep_tail else n_blocks * body
    width = np.full(1 if keep_tail else n_blocks, used if keep_tail else body, dtype=np.int64)
    width += 2 if wrap else 0
    out_len = int(width.sum())
    with open(folder / "input_ids.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<i4", "fortran_order": False, "shape": (out_len,)}
        )
        _write_blocks(fh, _stream(parts), used, body if not keep_tail else used, wrap)
    return finish_packed_split(folder, width, out_len, total, used)


def finish_packed_split(
    folder: Path, width: np.ndarray, out_len: int, total: int, used: int
) -> dict[str, Any]:
    """offsets.npy of a packed split (block widths; input_ids.npy already written) and
    its manifest counts: packed blocks never pad; the corpus tail that fills no block is
    dropped."""
    offsets = np.zeros(len(width) + 1, dtype=np.int64)
    np.cumsum(width, out=offsets[1:])
    np.save(folder / "offsets.npy", offsets)
    return {
        "examples": len(width),
        "tokens": out_len,
        "corpus_tokens": total,
        "dropped_tail_tokens": total - used,
        "padding_tokens": 0,
    }


def _stream(parts: list[Path]) -> Iterator[np.ndarray]:
    for part in parts:
        with open(part / "ids.bin", "rb") as fh:
            while block := fh.read(COPY):
                yield np.frombuffer(block, dtype=np.int32)


def _write_blocks(
    fh: Any, stream: Iterator[np.ndarray], used: int, body: int, wrap: tuple[int, int] | None
) -> None:
    """Write the first `used` stream tokens as blocks of `body` (wrapped when asked)."""
    pending = np.zeros(0, dtype=np.int32)
    left = used
    for piece in stream:
        if left <= 0:
            break
        pending = np.concatenate([pending, piece[: max(0, min(len(piece), left))]])
        left -= min(len(piece), left)
        whole = len(pending) // body * body
        if whole:
            _emit(fh, pending[:whole], body, wrap)
            pending = pending[whole:]
    if len(pending):
        _emit(fh, pending, body, wrap)


def _emit(fh: Any, tokens: np.ndarray, body: int, wrap: tuple[int, int] | None) -> None:
    if wrap is None:
        fh.write(tokens.tobytes())
        return
    rows = tokens.reshape(-1, len(tokens) if len(tokens) < body else body)
    framed = np.empty((rows.shape[0], rows.shape[1] + 2), dtype=np.int32)
    framed[:, 0], framed[:, 1:-1], framed[:, -1] = wrap[0], rows, wrap[1]
    fh.write(framed.tobytes())


def part_dirs(staging: Path, n: int) -> list[Path]:
    return [staging / f"parts-{n}" / str(i) for i in range(n)]


def complete_parts(staging: Path) -> list[Path] | None:
    """The parts of the first shard count whose every shard is complete, else None."""
    for folder in sorted(staging.glob("parts-*")):
        try:
            n = int(folder.name.split("-", 1)[1])
        except ValueError:
            continue
        parts = part_dirs(staging, n)
        if all((p / "DONE").is_file() for p in parts):
            return parts
    return None


def missing_parts(staging: Path) -> str:
    """Which shards are not complete yet, for the --merge error message."""
    lines = []
    for folder in sorted(staging.glob("parts-*")):
        n = int(folder.name.split("-", 1)[1])
        parts = part_dirs(staging, n)
        missing = [str(i) for i, p in enumerate(parts) if not (p / "DONE").is_file()]
        lines.append(f"of {n} shards, {', '.join(missing)} not done")
    return "; ".join(lines) or "no shard has run"


def publish_part(tmp: Path, final: Path) -> None:
    (tmp / "DONE").write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


SPLIT_NAMES = SPLITS
