"""Read token-tagged sentences (token classification) from JSON Lines or CoNLL columns.

Records are `{id, text, tokens, tags, label, group}`: `tokens` is the sentence as the data
splits it, `tags` one tag per token where `None` means "not annotated" (partially
labelled data: such words count in neither loss nor metrics), and `text` the tokens
joined by spaces (what tokenizer training and dedupe see).

- jsonl: one object per line; `data.source.text` names the token list (e.g. `tokens`),
  `data.source.label` the tag list (e.g. `tags`), `null` entries not annotated.
- conll: one `TOKEN ... TAG` line per token (whitespace-separated; the first column is the
  token, the last the tag), a blank line between sentences, `_` for a token that is not
  annotated, `-DOCSTART-` lines skipped (CoNLL-2003's document markers).

Every malformed row is a DataError naming the file and line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fine_tune_cli.data.sources import (
    _check_file,
    _format_from_name,
    _group_value,
    _is_gzip,
    _missing,
    _open_text,
    jsonl_objects,
    read_input,
)
from fine_tune_cli.data.steps import Record
from fine_tune_cli.errors import DataError, RecipeError
from fine_tune_cli.recipe import SourceSpec

NOT_ANNOTATED = "_"  # conll: the tag column of a token nobody tagged
DOCSTART = "-DOCSTART-"
CONLL_SUFFIXES = (".conll", ".conllx", ".bio", ".iob")
Sentence = tuple[list[str], list[str | None], str | None]  # tokens, tags, group


def read_tagged(spec: SourceSpec, *, need_tags: bool = True) -> list[Record]:
    """Sentences of `spec.path` (jsonl or conll, optionally gzipped) as tagged records.

    Without `need_tags` (prediction inputs) a missing tag field gives all-None tags and
    a txt file is one sentence per non-blank line, split on whitespace."""
    if need_tags and not spec.label:
        raise RecipeError(
            "data.source.label: token classification needs the field holding the tag list"
            " (e.g. tags)"
        )
    shown = spec.path or ""
    path = Path(shown)
    _check_file(path, shown)
    compressed = _is_gzip(path, shown)
    fmt = tagged_format(spec)
    if fmt not in READERS or (fmt == "txt" and need_tags):
        raise DataError(
            f"{shown}: token classification reads jsonl (token and tag lists) or CoNLL"
            f" columns (a .conll, .bio or .iob file), not {fmt}"
        )
    records: list[Record] = []
    with _open_text(path, spec, compressed=compressed) as handle:
        for tokens, tags, group in READERS[fmt](handle, spec, need_tags):
            records.append(
                {
                    "id": len(records),
                    "text": " ".join(tokens),
                    "tokens": tokens,
                    "tags": tags,
                    "label": None,
                    "group": group,
                }
            )
            if len(records) == spec.limit:
                break
    if not records:
        raise DataError(f"{shown}: no sentences")
    return records


def tagged_format(spec: SourceSpec) -> str:
    """The recipe's format, else conll for .conll/.bio/.iob names, else by extension."""
    if spec.format != "auto":
        return spec.format
    path = Path(spec.path or "")
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in CONLL_SUFFIXES:
        return "conll"
    return _format_from_name(path, spec.path or "")


def _tokens(value: Any, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: '{key}' must be a non-empty list of tokens, got"
            f" {type(value).__name__ if not isinstance(value, list) else 'an empty list'}"
            " (set data.source.text to the token-list field)"
        )
    for i, token in enumerate(value):
        if not isinstance(token, str) or not token.strip():
            raise DataError(f"{where}: token {i} of '{key}' is not a non-empty string ({token!r})")
    return value


def _tags(value: Any, n: int, where: str, key: str) -> list[str | None]:
    if not isinstance(value, list):
        raise DataError(
            f"{where}: '{key}' must be a list of tags (null = not annotated), got"
            f" {type(value).__name__}"
        )
    if len(value) != n:
        raise DataError(f"{where}: {len(value)} tags in '{key}' for {n} tokens (one tag per token)")
    for i, tag in enumerate(value):
        if tag is not None and (not isinstance(tag, str) or not tag.strip()):
            raise DataError(
                f"{where}: tag {i} of '{key}' must be a non-empty string or null, got {tag!r}"
            )
    return value


def _jsonl_rows(handle: IO[str], spec: SourceSpec, need_tags: bool) -> Iterator[Sentence]:
    for where, obj in jsonl_objects(handle, spec.path):
        if spec.text not in obj:
            raise _missing("text", spec.text, where, list(obj), "key")
        tokens = _tokens(obj[spec.text], where, spec.text)
        if spec.label and spec.label in obj:
            tags = _tags(obj[spec.label], len(tokens), where, spec.label)
        elif need_tags:
            raise _missing("label", spec.label or "tags", where, list(obj), "key")
        else:
            tags = [None] * len(tokens)
        group = None
        if spec.group:
            if spec.group not in obj:
                raise _missing("group", spec.group, where, list(obj), "key")
            group = _group_value(obj[spec.group], where, spec.group)
        yield tokens, tags, group


def _conll_rows(handle: IO[str], spec: SourceSpec, need_tags: bool) -> Iterator[Sentence]:
    shown = spec.path
    tokens: list[str] = []
    tags: list[str | None] = []
    for line_no, line in enumerate(handle, start=1):
        fields = line.split()
        if not fields:
            if tokens:
                yield tokens, tags, None
                tokens, tags = [], []
            continue
        if fields[0] == DOCSTART:
            continue
        if len(fields) < 2:
            raise DataError(
                f"{shown}: line {line_no}: expected 'TOKEN TAG' (whitespace-separated columns,"
                f" '{NOT_ANNOTATED}' for a token that is not annotated), got {line.strip()!r}"
            )
        tokens.append(fields[0])
        tags.append(None if fields[-1] == NOT_ANNOTATED else fields[-1])
    if tokens:
        yield tokens, tags, None


def _txt_rows(handle: IO[str], spec: SourceSpec, need_tags: bool) -> Iterator[Sentence]:
    """Prediction inputs only: one sentence per non-blank line, split on whitespace."""
    for line in handle:
        tokens = line.split()
        if tokens:
            yield tokens, [None] * len(tokens), None


READERS: dict[str, Callable[[IO[str], SourceSpec, bool], Iterator[Sentence]]] = {
    "jsonl": _jsonl_rows,
    "conll": _conll_rows,
    "txt": _txt_rows,
}


def read_prediction_inputs(source: str, spec: SourceSpec) -> list[Record]:
    """`ftc predict` inputs: jsonl rows holding the model's token-list field (its
    data.source.text, e.g. "tokens"; any tags are ignored) or plain text, one sentence per
    line split on whitespace; jsonl when the first line is a JSON object. `-` is stdin."""
    base = spec.model_copy(update={"label": None, "group": None, "limit": None})

    def read(path: str, fmt: str) -> list[Record]:
        return read_tagged(base.model_copy(update={"path": path, "format": fmt}), need_tags=False)

    return read_input(source, read)
