"""Where `ftc prepare` puts the prepared-data store: FTC_CACHE_DIR, else XDG_CACHE_HOME,
else ~/.cache (CONTRACT Additions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ARGS = ("demo", "data.source.limit=120", "data.tokenizer.vocab_size=300", "--json")


def _prepared_dir(ftc) -> Path:
    result = ftc("prepare", *ARGS)
    assert result.code == 0, result.err
    return Path(json.loads(result.out)["outputs"]["prepared"])


@pytest.mark.parametrize("where", ["ftc", "xdg", "home"])
def test_cache_root_order(ftc, isolated: Path, monkeypatch: pytest.MonkeyPatch, where: str):
    monkeypatch.delenv("FTC_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(isolated / "home"))
    if where == "ftc":
        monkeypatch.setenv("FTC_CACHE_DIR", str(isolated / "ftc-cache"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "xdg"))  # FTC_CACHE_DIR wins
        expected = isolated / "ftc-cache" / "prepared"
    elif where == "xdg":
        monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "xdg"))
        expected = isolated / "xdg" / "fine_tune_cli" / "prepared"
    else:
        expected = isolated / "home" / ".cache" / "fine_tune_cli" / "prepared"
    assert _prepared_dir(ftc).parent == expected
