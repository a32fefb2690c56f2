"""Read a data file (csv, jsonl, txt; optionally gzipped) into records.

Every problem a user can cause becomes one DataError line naming the file, the row or
line and the recipe key to change. Files are streamed line by line so `limit` reads only
the head of a large file.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from fine_tune_cli.data.steps import Record
from fine_tune_cli.errors import DataError
from fine_tune_cli.recipe import IMAGE_FORMATS, SourceSpec
from fine_tune_cli.registry import Registry

GZIP_MAGIC = b"\x1f\x8b"
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".txt": "txt"}
# Raw emails in a CSV cell easily exceed csv's default 128 KiB field limit.
CSV_FIELD_LIMIT = 2**31 - 1


# A source reads `data.source` into records: (spec, need_label) -> records. Keyed by
# data.source.format; text formats register below, image formats in image_sources.py
# (both imported by fine_tune_cli/data/__init__.py).
Source = Callable[[SourceSpec, bool], list[Record]]
SOURCES: Registry[Source] = Registry("source format")


def read_source(spec: SourceSpec, *, need_label: bool, images: bool = False) -> list[Record]:
    """Records `{id, text, label, group}` of `spec.path`; ids are 0-based row indices.

    With `need_label`, every record must have a non-empty label; without it a missing
    label column (e.g. the default `label` on a pretraining corpus) gives label None.
    With `images` (an image task's recipe) or an image format, the records hold
    decoded images instead of text (data/image_sources.py).
    """
    if images or spec.format in IMAGE_FORMATS:
        from fine_tune_cli.data.image_sources import image_format

        fmt = image_format(spec)
    else:
        path = Path(spec.path)
        _check_file(path, spec.path)
        fmt = spec.format if spec.format != "auto" else _format_from_name(path, spec.path)
    return SOURCES.get(fmt)(spec, need_label)


Reader = Callable[[IO[str], SourceSpec, bool], Iterator[Record]]
# The text formats' record iterators by format: prepare streams these (flat memory).
TEXT_READERS: dict[str, tuple[Reader, Callable[[SourceSpec, bool], None]]] = {}


def iter_text_records(spec: SourceSpec, need_label: bool) -> Iterator[Record]:
    """The records of a text source one at a time (never the whole file in memory); a
    source without a single row is a DataError once the file is exhausted."""
    path = Path(spec.path)
    _check_file(path, spec.path)
    fmt = spec.format if spec.format != "auto" else _format_from_name(path, spec.path)
    read, check = TEXT_READERS[fmt]
    compressed = _is_gzip(path, spec.path)
    check(spec, need_label)
    empty = True
    with _open_text(path, spec, compressed=compressed) as handle:
        for record in read(handle, spec, need_label):
            empty = False
            yield record
    if empty:
        raise DataError(f"{spec.path}: no rows")


def text_source(read: Reader, check: Callable[[SourceSpec, bool], None]) -> Source:
    """A text format's reader on the opened (maybe gzipped, decoded) file; `check` reports
    recipe/format mismatches before the file is opened."""

    def source(spec: SourceSpec, need_label: bool) -> list[Record]:
        path = Path(spec.path)
        _check_file(path, spec.path)
        compressed = _is_gzip(path, spec.path)
        check(spec, need_label)
        with _open_text(path, spec, compressed=compressed) as handle:
            records = list(read(handle, spec, need_label))
        if not records:
            raise DataError(f"{spec.path}: no rows")
        return records

    return source


def _labelled_text(spec: SourceSpec, need_label: bool) -> None:
    if need_label and not spec.label:
        raise DataError(f"{spec.path}: this task needs labels; set data.source.label")


# --------------------------------------------------------------------------- opening
def _check_file(path: Path, shown: str) -> None:
    if not path.exists():
        raise DataError(f"{shown}: data file not found (set data.source.path)")
    if path.is_dir():
        raise DataError(f"{shown}: is a directory, not a data file (set data.source.path)")


def _is_gzip(path: Path, shown: str) -> bool:
    try:
        with path.open("rb") as handle:
            magic = handle.read(2)
    except OSError as exc:
        raise DataError(f"{shown}: cannot read data file ({exc.strerror or exc})") from None
    # Trust the bytes over the name: a misnamed `.gz` that is plain text still reads.
    return magic == GZIP_MAGIC


def _format_from_name(path: Path, shown: str) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DataError(
            f"{shown}: cannot tell the format from the file name; set data.source.format"
            " (csv, jsonl or txt)"
        )
    return fmt


def _encoding(name: str, shown: str) -> str:
    try:
        canonical = codecs.lookup(name).name
    except LookupError:
        raise DataError(
            f"{shown}: unknown encoding '{name}' (set data.source.encoding, e.g. utf-8 or latin-1)"
        ) from None
    # Accept a UTF-8 byte-order mark (Excel writes one) instead of reading it into a column.
    return "utf-8-sig" if canonical == "utf-8" else canonical


def _open(path: Path, encoding: str, *, compressed: bool) -> IO[str]:
    if compressed:
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return path.open(encoding=encoding, newline="")


@contextmanager
def _open_text(path: Path, spec: SourceSpec, *, compressed: bool) -> Iterator[IO[str]]:
    encoding = _encoding(spec.encoding, spec.path)
    try:
        with _open(path, encoding, compressed=compressed) as handle:
            yield handle
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{spec.path}: not valid {spec.encoding} text ({exc.reason});"
            " set data.source.encoding (e.g. latin-1)"
        ) from None
    except (OSError, EOFError) as exc:
        # Permission denied, gzip.BadGzipFile and a truncated archive land here.
        raise DataError(
            f"{spec.path}: cannot read data file ({getattr(exc, 'strerror', None) or exc})"
        ) from None


# --------------------------------------------------------------------------- values
def _label_value(value: Any, where: str, key: str, need_label: bool) -> str | None:
    if value is None or value == "":
        if need_label:
            raise DataError(f"{where}: empty label in '{key}' (every example needs a label)")
        return None
    if isinstance(value, str | int | float | bool):
        return str(value)
    raise DataError(
        f"{where}: label in '{key}' must be a string or number, got {type(value).__name__}"
    )


def _group_value(value: Any, where: str, key: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str | int | float | bool):
        return str(value)
    raise DataError(
        f"{where}: group in '{key}' must be a string or number, got {type(value).__name__}"
    )


def _missing(what: str, key: str, where: str, available: list[str], kind: str) -> DataError:
    return DataError(
        f"{where}: missing {kind} '{key}' ({kind}s: {', '.join(available) or 'none'});"
        f" set data.source.{what}"
    )


# --------------------------------------------------------------------------- formats
def _read_csv(handle: IO[str], spec: SourceSpec, need_label: bool) -> Iterator[Record]:
    shown = spec.path
    old_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                return
            columns = [c.strip() for c in header]
            index = {name: i for i, name in enumerate(columns)}
            where = f"{shown}: header"
            if spec.text not in index:
                raise _missing("text", spec.text, where, columns, "column")
            if spec.group and spec.group not in index:
                raise _missing("group", spec.group, where, columns, "column")
            label_col = spec.label if spec.label in index else None
            if need_label and spec.label and label_col is None:
                raise _missing("label", spec.label, where, columns, "column")
            n = 0
            for row in reader:
                if spec.limit is not None and n >= spec.limit:
                    break
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                # Rows are numbered as in a spreadsheet: the header is row 1.
                where = f"{shown}: row {n + 2}"
                if len(row) != len(columns):
                    raise DataError(
                        f"{where}: {len(row)} fields but the header has {len(columns)}"
                        " (check the quoting: quote fields holding commas, close every quote)"
                    )
                yield {
                    "id": n,
                    "text": row[index[spec.text]],
                    "label": (
                        _label_value(row[index[label_col]], where, label_col, need_label)
                        if label_col
                        else None
                    ),
                    "group": (
                        _group_value(row[index[spec.group]], where, spec.group)
                        if spec.group
                        else None
                    ),
                }
                n += 1
        except csv.Error as exc:
            raise DataError(f"{shown}: line {reader.line_num}: malformed CSV ({exc})") from None
    finally:
        csv.field_size_limit(old_limit)


def jsonl_objects(handle: IO[str], shown: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """("<file>: line N", object) for each non-blank line; a line that is not a JSON
    object is a DataError naming it (text sources and image manifests alike)."""
    for line_no, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        where = f"{shown}: line {line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if line_no == 1 and line.lstrip().startswith("["):
                hint = "; a JSON array is not JSON Lines: write one object per line"
            raise DataError(
                f"{where}: invalid JSON ({exc.msg} at column {exc.colno}){hint}"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def _read_jsonl(handle: IO[str], spec: SourceSpec, need_label: bool) -> Iterator[Record]:
    for n, (where, obj) in enumerate(jsonl_objects(handle, spec.path)):
        keys = list(obj)
        if spec.text not in obj:
            raise _missing("text", spec.text, where, keys, "key")
        text = obj[spec.text]
        if not isinstance(text, str):
            raise DataError(
                f"{where}: '{spec.text}' must be a string, got {type(text).__name__}"
                " (set data.source.text to the text field)"
            )
        label = None
        if spec.label:
            if spec.label in obj:
                label = _label_value(obj[spec.label], where, spec.label, need_label)
            elif need_label:
                raise _missing("label", spec.label, where, keys, "key")
        group = None
        if spec.group:
            if spec.group not in obj:
                raise _missing("group", spec.group, where, keys, "key")
            group = _group_value(obj[spec.group], where, spec.group)
        yield {"id": n, "text": text, "label": label, "group": group}
        if n + 1 == spec.limit:  # stop before reading (and judging) the next line
            break


def _txt_columns(spec: SourceSpec, need_label: bool) -> None:
    if need_label:
        raise DataError(
            f"{spec.path}: a txt file has no labels; use csv or jsonl with a label column"
            " (or a task that needs no labels)"
        )
    if spec.group:
        raise DataError(f"{spec.path}: a txt file has no columns; unset data.source.group")


def _read_txt(handle: IO[str], spec: SourceSpec, need_label: bool) -> Iterator[Record]:
    """One record per non-empty line, or per blank-line-separated paragraph (documents
    such as chapters, kept whole so LM splits hold out whole documents)."""
    n = 0
    paragraph: list[str] = []

    def record(text: str) -> Record:
        return {"id": n, "text": text, "label": None, "group": None}

    for line in handle:
        if spec.limit is not None and n >= spec.limit:
            break
        text = line.rstrip("\r\n")
        if spec.txt_unit == "line":
            if text.strip():
                yield record(text)
                n += 1
        elif text.strip():
            paragraph.append(text)
        elif paragraph:
            yield record("\n".join(paragraph))
            n += 1
            paragraph = []
    if paragraph and (spec.limit is None or n < spec.limit):
        yield record("\n".join(paragraph))


TEXT_READERS.update(
    csv=(_read_csv, _labelled_text),
    jsonl=(_read_jsonl, _labelled_text),
    txt=(_read_txt, _txt_columns),
)
for _name, (_read, _check) in TEXT_READERS.items():
    SOURCES.add(_name, text_source(_read, _check))


STDIN = "-"


def lines_format(head: bytes) -> str:
    """ "jsonl" when the first non-blank line (of a gzip member too) is a JSON object, else
    "txt": how `ftc predict` reads an input whose name does not say."""
    import zlib

    if head[:2] == GZIP_MAGIC:  # a truncated member is fine: its start is enough
        head = zlib.decompressobj(wbits=31).decompress(head)
    first = next((line for line in head.splitlines() if line.strip()), b"")
    return "jsonl" if first.lstrip().startswith(b"{") else "txt"


def read_input(
    source: str, read: Callable[[str, str], list[Record]], *, trust_extension: bool = False
) -> list[Record]:
    """`ftc predict` inputs: `read(path, format)` on a file, or on stdin (`-`) spooled to a
    temp file so every reader works on a path; errors name <stdin>, not the temp file.
    With trust_extension a known extension (.csv, .jsonl, ...) picks the format itself."""
    import os
    import sys
    import tempfile

    if source != STDIN:
        path = Path(source)
        suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
        if trust_extension and suffixes and suffixes[-1] in EXTENSIONS:
            return read(source, "auto")
        try:
            with path.open("rb") as fh:
                head = fh.read(4096)
        except OSError as exc:
            raise DataError(f"{path}: cannot read input ({exc.strerror})") from None
        return read(source, lines_format(head))
    data = sys.stdin.buffer.read()
    fd, tmp = tempfile.mkstemp(prefix="ftc-stdin-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            return read(tmp, lines_format(data[:4096]))
        except DataError as exc:
            raise DataError(exc.message.replace(tmp, "<stdin>")) from None
    finally:
        os.unlink(tmp)
