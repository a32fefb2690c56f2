"""Fixtures for the language-model tests: small corpora built from the real text of the
bundled demo emails, recipe writers, and tiny pretraining runs trained once per session
through the real CLI (the chaining tests start from them)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import DEMO_DATA, Result, cli_env, run_cli

# Few steps, tiny models, short blocks: the LM suite has to stay well under a minute.
FAST_TRAIN = {"max_steps": 2, "batch_size": 8, "eval_every": 2}


# --------------------------------------------------------------------------- real text
def email_bodies(n: int, clip: int = 600) -> list[str]:
    """The bodies (text after the header block) of the first `n` demo emails that have
    one, each collapsed to a single line of at most `clip` characters."""
    bodies: list[str] = []
    with gzip.open(DEMO_DATA, "rt", encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line)["text"]
            body = " ".join(text.split("\n\n", 1)[-1].split())[:clip]
            if body:
                bodies.append(body)
            if len(bodies) == n:
                break
    return bodies


def email_line_groups(n_emails: int, min_lines: int = 3) -> list[list[str]]:
    """Per email, its body lines of at least 3 words (unique across all emails), for
    emails that have at least `min_lines` of them: documents made of segments."""
    seen: set[str] = set()
    docs: list[list[str]] = []
    with gzip.open(DEMO_DATA, "rt", encoding="utf-8") as fh:
        for line in fh:
            body = json.loads(line)["text"].split("\n\n", 1)[-1]
            segments = []
            for raw in body.splitlines():
                seg = " ".join(raw.split())
                if len(seg.split()) >= 3 and seg not in seen:
                    seen.add(seg)
                    segments.append(seg[:300])
            if len(segments) >= min_lines:
                docs.append(segments[:12])
            if len(docs) == n_emails:
                break
    return docs


def write_paragraph_corpus(path: Path, n: int, clip: int = 600) -> Path:
    """A txt corpus: one email body per paragraph, paragraphs separated by blank lines."""
    path.write_text("\n\n".join(email_bodies(n, clip)) + "\n", encoding="utf-8")
    return path


def write_grouped_jsonl(path: Path, n_emails: int) -> Path:
    """jsonl rows {text: body line, email: index}: each email is one document."""
    rows = [
        {"text": seg, "email": f"email-{i:03d}"}
        for i, doc in enumerate(email_line_groups(n_emails))
        for seg in doc
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_recipe(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"version": 1, **tree}, sort_keys=False), encoding="utf-8")
    return path


def clm_recipe(path: Path, corpus: Path, name: str = "lm-clm", **train: Any) -> Path:
    return write_recipe(
        path,
        {
            "name": name,
            "model": {"family": "gpt2", "task": "clm", "size": "tiny"},
            "data": {
                "source": {"path": corpus.name, "format": "txt", "txt_unit": "paragraph"},
                "tokenizer": {"kind": "bpe", "vocab_size": 500},
                "max_length": 32,
            },
            "generate": {"samples": 2, "max_new_tokens": 8, "prompt_tokens": 8},
            "train": {**FAST_TRAIN, **train},
        },
    )


def mlm_recipe(path: Path, corpus: Path, name: str = "lm-mlm", **train: Any) -> Path:
    return write_recipe(
        path,
        {
            "name": name,
            "model": {"family": "bert", "task": "mlm", "size": "tiny"},
            "data": {
                "source": {"path": corpus.name, "format": "txt", "txt_unit": "paragraph"},
                "tokenizer": {"kind": "wordpiece", "vocab_size": 500},
                "max_length": 32,
            },
            "train": {**FAST_TRAIN, **train},
        },
    )


def nsp_recipe(path: Path, data: Path, name: str = "lm-nsp", **train: Any) -> Path:
    return write_recipe(
        path,
        {
            "name": name,
            "model": {"family": "bert", "task": "mlm_nsp", "size": "tiny"},
            "data": {
                "source": {"path": data.name, "text": "text", "label": None, "group": "email"},
                "split": {"validation": 0.2, "test": 0.2, "by_group": True, "seed": 0},
                "tokenizer": {"kind": "wordpiece", "vocab_size": 500},
                "max_length": 48,
            },
            "train": {**FAST_TRAIN, **train},
        },
    )


def classification_recipe(
    path: Path, family: str, name: str, init_from: str | None = None, **data: Any
) -> Path:
    """Spam vs ham on the first demo emails (both labels are present early in the file)."""
    model: dict[str, Any] = {"family": family, "task": "classification", "size": "tiny"}
    if init_from:
        model["init_from"] = init_from
    return write_recipe(
        path,
        {
            "name": name,
            "model": model,
            "data": {
                "source": {"path": str(DEMO_DATA), "limit": 120},
                "max_length": 32,
                **data,
            },
            "train": FAST_TRAIN,
        },
    )


# --------------------------------------------------------------------------- CLI runs


@pytest.fixture(scope="session")
def lm_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working dir with the corpora the session's pretraining runs train on."""
    base = tmp_path_factory.mktemp("lm")
    write_paragraph_corpus(base / "corpus.txt", 60, clip=400)
    write_grouped_jsonl(base / "emails.jsonl", 24)
    return base


def _train(base: Path, cache_dir: Path, recipe: Path) -> tuple[Result, Path]:
    with cli_env(cache_dir, base):
        result = run_cli("train", recipe, "--json")
    assert result.code == 0, result.err
    return result, base / result.json()["run_dir"]


@pytest.fixture(scope="session")
def mlm_run(lm_base: Path, cache_dir: Path) -> tuple[Result, Path]:
    """A tiny BERT masked-LM run (2 steps) on the paragraph corpus."""
    return _train(lm_base, cache_dir, mlm_recipe(lm_base / "mlm.yaml", lm_base / "corpus.txt"))


@pytest.fixture(scope="session")
def clm_run(lm_base: Path, cache_dir: Path) -> tuple[Result, Path]:
    """A tiny GPT-2 causal-LM run (2 steps) on the paragraph corpus."""
    return _train(lm_base, cache_dir, clm_recipe(lm_base / "clm.yaml", lm_base / "corpus.txt"))


@pytest.fixture(scope="session")
def nsp_run(lm_base: Path, cache_dir: Path) -> tuple[Result, Path]:
    """A tiny BERT MLM + NSP run (2 steps) on email lines grouped per email."""
    return _train(lm_base, cache_dir, nsp_recipe(lm_base / "nsp.yaml", lm_base / "emails.jsonl"))
