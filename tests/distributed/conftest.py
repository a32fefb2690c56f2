"""What the DDP and FSDP tests share: a tiny deterministic setting and `ftc` in a
subprocess with OMP_NUM_THREADS=1 (two torch processes with default threads on 2 cores
crawl)."""

from __future__ import annotations

import os
import subprocess
import sys

# Tiny, dropout-free and SGD so runs with the same global batch must agree to ~1e-7.
DIST_BASE = [
    "model.size=tiny",
    "model.dropout=0",
    "data.tokenizer.vocab_size=600",
    "data.source.limit=300",
    "data.max_length=64",
    "train.max_steps=6",
    "train.eval_every=3",
    "optim.name=sgd",
    "optim.lr=0.5",
    "optim.momentum=0.9",
]


def run_ftc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fine_tune_cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
