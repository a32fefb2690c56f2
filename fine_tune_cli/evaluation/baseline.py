"""The classic baseline beside a classifier: a scikit-learn model fitted on the run's own
train split and scored on the evaluated split, so a report says at once whether the
network earns its cost over TF-IDF + logistic regression (text) or logistic regression
on pixels (images).

The task decides the features (tasks/classification.py, tasks/image_classification.py);
this module fits, scores and bounds the time: above MAX_TRAIN_ROWS train rows a seeded
random subsample of that size is fitted (the evaluated split is always scored whole).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger("ftc")

MAX_TRAIN_ROWS = 50_000  # fit on a seeded subsample above this (bounded time on big data)
MAX_IMAGE_SIDE = 32  # images are block-averaged down to at most this side first


def text_model() -> Any:
    """TF-IDF over word uni- and bigrams + logistic regression (the issue's baseline)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(max_iter=1000))


def pixel_model() -> Any:
    """Logistic regression on raw pixels scaled to [0, 1]."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000)


def pixel_features(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, C, S, S) -> float (N, C*s*s) in [0, 1], block-averaged so s <= 32:
    logistic regression on 224x224x3 raw pixels would be slow and no better."""
    x = np.asarray(pixels, dtype=np.float32) / 255.0
    side = x.shape[-1]
    factor = -(-side // MAX_IMAGE_SIDE)
    if factor > 1:
        keep = (side // factor) * factor
        n, c = x.shape[:2]
        x = x[:, :, :keep, :keep].reshape(n, c, keep // factor, factor, keep // factor, factor)
        x = x.mean(axis=(3, 5))
    return x.reshape(len(x), -1)


def train_subsample(n: int, seed: int, limit: int = MAX_TRAIN_ROWS) -> np.ndarray:
    """Sorted row indices of the train rows to fit: all of them up to `limit`, else a
    seeded random `limit` of them (same seed, same rows)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def fit_and_score(
    model: Any,
    name: str,
    x_train: Sequence[Any] | np.ndarray,
    y_train: np.ndarray,
    x_eval: Sequence[Any] | np.ndarray,
    y_eval: np.ndarray,
    seed: int,
) -> dict[str, Any]:
    """`baseline_accuracy`, `baseline_f1_macro` and a `baseline` entry saying what was
    fitted on how many rows; {} (with a warning) when the train split has one class.
    Macro-F1 averages like the model's (classes present in truth or predictions)."""
    from sklearn.metrics import accuracy_score, f1_score

    y_train = np.asarray(y_train, dtype=np.int64)
    y_eval = np.asarray(y_eval, dtype=np.int64)
    rows = train_subsample(len(y_train), seed)
    if len(np.unique(y_train[rows])) < 2:
        log.warning("baseline skipped: the train split holds a single class")
        return {}
    fit_x = x_train[rows] if isinstance(x_train, np.ndarray) else [x_train[i] for i in rows]
    started = time.perf_counter()
    model.fit(fit_x, y_train[rows])
    pred = model.predict(x_eval)
    seconds = time.perf_counter() - started
    if len(rows) < len(y_train):
        log.info(
            "baseline fitted on a seeded subsample of %d of %d train rows", len(rows), len(y_train)
        )
    return {
        "baseline_accuracy": float(accuracy_score(y_eval, pred)),
        "baseline_f1_macro": float(f1_score(y_eval, pred, average="macro", zero_division=0)),
        "baseline": {
            "model": name,
            "train_rows": len(rows),
            "train_rows_total": len(y_train),
            "seed": int(seed),
            "seconds": round(seconds, 2),
        },
    }
