"""read_source: every format, gzip, limit, and one clear DataError per problem."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from fine_tune_cli.data.sources import read_source
from fine_tune_cli.errors import DataError
from fine_tune_cli.recipe import SourceSpec


def write(path: Path, content: str | bytes, *, compress: bool = False) -> Path:
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def jsonl(*rows: Any) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def read(path: Path, *, need_label: bool = True, **spec: Any) -> list[dict[str, Any]]:
    return read_source(SourceSpec(path=str(path), **spec), need_label=need_label)


def error(path: Path, *, need_label: bool = True, **spec: Any) -> str:
    with pytest.raises(DataError) as info:
        read(path, need_label=need_label, **spec)
    message = info.value.message
    assert "\n" not in message
    assert message.startswith(str(path)), message
    assert info.value.exit_code == 3
    return message


CSV = 'text,label,topic\nhello world,pos,a\n"quoted, with comma",neg,b\nthird,pos,\n'


# --------------------------------------------------------------------------- formats
def test_csv(tmp_path: Path) -> None:
    recs = read(write(tmp_path / "d.csv", CSV), group="topic")
    assert recs == [
        {"id": 0, "text": "hello world", "label": "pos", "group": "a"},
        {"id": 1, "text": "quoted, with comma", "label": "neg", "group": "b"},
        {"id": 2, "text": "third", "label": "pos", "group": None},
    ]


def test_csv_custom_columns_bom_and_crlf(tmp_path: Path) -> None:
    content = '\ufeffbody,category\r\nfirst,x\r\n"multi\r\nline",y\r\n'
    recs = read(write(tmp_path / "d.csv", content), text="body", label="category")
    assert [(r["text"], r["label"]) for r in recs] == [("first", "x"), ("multi\r\nline", "y")]


def test_jsonl_converts_labels_and_groups_to_str_and_skips_blank_lines(tmp_path: Path) -> None:
    content = jsonl(
        {"text": "a", "label": 1, "g": 7},
        {"text": "b", "label": True, "g": None},
        {"text": "c", "label": "x", "g": "k"},
    )
    content = content.replace("\n", "\n\n", 1) + "   \n"
    recs = read(write(tmp_path / "d.jsonl", content), group="g")
    assert recs == [
        {"id": 0, "text": "a", "label": "1", "group": "7"},
        {"id": 1, "text": "b", "label": "True", "group": None},
        {"id": 2, "text": "c", "label": "x", "group": "k"},
    ]


@pytest.mark.parametrize("suffix", [".json", ".ndjson", ".JSONL"])
def test_jsonl_extensions(tmp_path: Path, suffix: str) -> None:
    recs = read(write(tmp_path / f"d{suffix}", jsonl({"text": "a", "label": "x"})))
    assert recs[0]["text"] == "a"


def test_txt_one_record_per_non_empty_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "first line\n\n   \n  second line  \r\nlast")
    recs = read(path, need_label=False)
    assert recs == [
        {"id": 0, "text": "first line", "label": None, "group": None},
        {"id": 1, "text": "  second line  ", "label": None, "group": None},
        {"id": 2, "text": "last", "label": None, "group": None},
    ]


def test_explicit_format_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "data.dat", jsonl({"text": "a", "label": "x"}))
    assert read(path, format="jsonl")[0]["label"] == "x"


def test_labels_optional_when_not_needed(tmp_path: Path) -> None:
    # The default label column 'label' is absent from a pretraining corpus: labels are None.
    path = write(tmp_path / "d.jsonl", jsonl({"text": "a"}, {"text": "b", "label": ""}))
    assert [r["label"] for r in read(path, need_label=False)] == [None, None]
    path = write(tmp_path / "d.csv", "text\nonly text\n")
    assert read(path, need_label=False)[0]["label"] is None
    assert read(path, need_label=False, label=None)[0]["label"] is None


def test_encoding(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\ncafé,x\n".encode("latin-1"))
    assert read(path, encoding="latin-1")[0]["text"] == "café"


# --------------------------------------------------------------------------- gzip
@pytest.mark.parametrize(
    ("name", "content", "spec"),
    [
        ("d.csv.gz", CSV, {}),
        ("d.jsonl.gz", jsonl({"text": "hello world", "label": "pos"}), {}),
        ("d.txt.gz", "hello world\n", {"need_label": False}),
    ],
)
def test_gzip_by_suffix(tmp_path: Path, name: str, content: str, spec: dict[str, Any]) -> None:
    recs = read(write(tmp_path / name, content, compress=True), **spec)
    assert recs[0]["text"] == "hello world"


def test_gzip_detected_by_magic_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", CSV, compress=True)
    assert len(read(path)) == 3


def test_gz_suffix_on_plain_text_still_reads(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl.gz", jsonl({"text": "a", "label": "x"}))
    assert read(path)[0]["text"] == "a"


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(jsonl(*({"text": f"row {i}", "label": "x"} for i in range(500))).encode())
    path = write(tmp_path / "d.jsonl.gz", data[: len(data) // 2])
    assert "cannot read data file" in error(path)


# --------------------------------------------------------------------------- limit
@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.csv", "text,label\n" + "".join(f"row {i},x\n" for i in range(50))),
        ("d.jsonl", jsonl(*({"text": f"row {i}", "label": "x"} for i in range(50)))),
        ("d.txt", "".join(f"row {i}\n\n" for i in range(50))),
    ],
)
def test_limit(tmp_path: Path, name: str, content: str) -> None:
    recs = read(write(tmp_path / name, content), need_label=not name.endswith("txt"), limit=7)
    assert [r["id"] for r in recs] == list(range(7))
    assert recs[-1]["text"] == "row 6"


def test_limit_stops_before_a_bad_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", jsonl({"text": "a", "label": "x"}) + "{broken\n")
    assert len(read(path, limit=1)) == 1


# --------------------------------------------------------------------------- errors: files
def test_missing_file(tmp_path: Path) -> None:
    message = error(tmp_path / "nope.csv")
    assert message.endswith("data file not found (set data.source.path)")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    assert "is a directory" in error(tmp_path / "dir.csv")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", CSV)
    path.chmod(0)
    try:
        assert "cannot read data file (Permission denied)" in error(path)
    finally:
        path.chmod(0o644)


def test_unknown_extension_asks_for_format(tmp_path: Path) -> None:
    message = error(write(tmp_path / "data.parquet", "x"))
    assert "set data.source.format" in message
    assert "set data.source.format" in error(write(tmp_path / "noext", "x"))


def test_bad_encoding_suggests_encoding(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\ncafé,x\n".encode("latin-1"))
    message = error(path)
    assert "not valid utf-8 text" in message and "set data.source.encoding" in message


def test_unknown_encoding_name(tmp_path: Path) -> None:
    message = error(write(tmp_path / "d.csv", CSV), encoding="utf-99")
    assert "unknown encoding 'utf-99'" in message and "data.source.encoding" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [("d.csv", ""), ("d.csv", "text,label\n"), ("d.jsonl", "\n\n"), ("d.txt", " \n\n")],
)
def test_no_rows(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path / name, content)
    assert error(path, need_label=False) == f"{path}: no rows"


# --------------------------------------------------------------------------- errors: csv
def test_csv_missing_label_column_reported_from_header(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,category\na,x\n")
    assert error(path) == (
        f"{path}: header: missing column 'label' (columns: text, category); set data.source.label"
    )


def test_csv_missing_text_and_group_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "body,label\na,x\n")
    assert "missing column 'text' (columns: body, label); set data.source.text" in error(path)
    path = write(tmp_path / "e.csv", CSV)
    assert "missing column 'grp'" in error(path, group="grp")


def test_csv_empty_label_names_the_row(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\na,x\nb,y\nc,\n")
    assert error(path) == f"{path}: row 4: empty label in 'label' (every example needs a label)"


def test_csv_ragged_row(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\na,x\nb,y,extra\n")
    assert error(path).startswith(f"{path}: row 3: 3 fields but the header has 2")


def test_csv_unclosed_quote(tmp_path: Path) -> None:
    # The open quote swallows the rest of the file into one field.
    path = write(tmp_path / "d.csv", 'text,label\na,x\n"b,y\nc,z\n')
    assert error(path).startswith(f"{path}: row 3: 1 fields but the header has 2")


# --------------------------------------------------------------------------- errors: jsonl
def test_jsonl_invalid_json_names_the_line(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"t{i}", "label": "x"}) for i in range(16)]
    lines.append('{"text": "t16" "label": "x"}')
    path = write(tmp_path / "x.jsonl", "\n".join(lines) + "\n")
    assert error(path).startswith(f"{path}: line 17: invalid JSON (Expecting ',' delimiter")


def test_jsonl_array_file_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", '[\n{"text": "a"}\n]\n')
    assert "a JSON array is not JSON Lines" in error(path)


def test_jsonl_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", jsonl({"text": "a", "label": "x"}, ["a", "x"]))
    assert error(path) == f"{path}: line 2: expected a JSON object, got list"


def test_jsonl_first_line_missing_a_key(tmp_path: Path) -> None:
    content = jsonl({"text": "a", "label": "x"}, {"text": "b", "category": "y"}, {"text": "c"})
    path = write(tmp_path / "d.jsonl", content)
    assert error(path) == (
        f"{path}: line 2: missing key 'label' (keys: text, category); set data.source.label"
    )
    path = write(tmp_path / "e.jsonl", jsonl({"body": "a", "label": "x"}))
    assert "line 1: missing key 'text' (keys: body, label); set data.source.text" in error(path)
    path = write(tmp_path / "f.jsonl", jsonl({"text": "a", "label": "x"}))
    assert "line 1: missing key 'grp'" in error(path, group="grp")


@pytest.mark.parametrize("value", [None, 3, ["a"]])
def test_jsonl_text_not_a_string(tmp_path: Path, value: Any) -> None:
    path = write(tmp_path / "d.jsonl", jsonl({"text": "ok", "label": "x"}, {"text": value}))
    assert f"{path}: line 2: 'text' must be a string" in error(path)


@pytest.mark.parametrize("value", [None, ""])
def test_jsonl_null_or_empty_label(tmp_path: Path, value: Any) -> None:
    path = write(tmp_path / "d.jsonl", jsonl({"text": "a", "label": value}))
    assert error(path) == f"{path}: line 1: empty label in 'label' (every example needs a label)"


def test_jsonl_label_of_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", jsonl({"text": "a", "label": {"k": 1}}))
    assert "line 1: label in 'label' must be a string or number, got dict" in error(path)


# --------------------------------------------------------------------------- errors: txt
def test_txt_has_no_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "a\n")
    assert "a txt file has no labels" in error(path, need_label=True)
    assert "unset data.source.group" in error(path, need_label=False, group="g")


def test_need_label_without_a_label_column_configured(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", CSV)
    assert "set data.source.label" in error(path, label=None)
