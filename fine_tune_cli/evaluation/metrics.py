"""Metrics for classification and language modelling, named as CONTRACT.md fixes them.

Everything returned is plain Python (float, int, str, list, dict) so it goes straight
into metrics.json, metrics.jsonl and `--json` output.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ECE_BINS = 15


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    label_names: list[str],
    loss: float | None = None,
) -> dict[str, Any]:
    """Accuracy, P/R/F1 (macro, micro, weighted), ROC AUC, ECE, per-class figures.

    `y_true` holds class ids, `probs` the (n, C) softmax probabilities; the prediction
    is the argmax. Macro averages cover the classes present in `y_true` or the
    predictions (scikit-learn's default), so a class absent from a small split does not
    count as a zero; `per_class` and `confusion_matrix` always cover all C classes.
    `roc_auc` is present only for binary tasks whose split holds both classes.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (n, classes), got shape {probs.shape}")
    n, num_classes = probs.shape
    if n == 0:
        raise ValueError("no examples to compute metrics on")
    if len(y_true) != n:
        raise ValueError(f"{len(y_true)} labels but {n} rows of probabilities")
    if num_classes != len(label_names):
        raise ValueError(f"{num_classes} probability columns but {len(label_names)} labels")
    low, high = int(y_true.min()), int(y_true.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"label ids must lie in [0, {num_classes}), got {low}..{high}")

    y_pred = probs.argmax(axis=1)
    all_labels = list(range(num_classes))
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "num_examples": int(n),
    }
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0
        )
        out[f"precision_{average}"] = float(p)
        out[f"recall_{average}"] = float(r)
        out[f"f1_{average}"] = float(f)

    if num_classes == 2 and len(np.unique(y_true)) == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, probs[:, 1]))

    out["ece"] = expected_calibration_error(y_true, probs)
    if loss is not None:
        out["loss"] = float(loss)
    counts = np.bincount(y_true, minlength=num_classes)
    out["majority_baseline"] = float(counts.max() / n)

    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, average=None, zero_division=0
    )
    out["per_class"] = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(label_names)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=all_labels).tolist()
    return out


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Weighted mean |accuracy - confidence| over equal-width bins of max-prob confidence.

    scikit-learn has no ECE; bins are (lo, hi] as in Guo et al. 2017, with a confidence
    of exactly 0 falling into the first bin.
    """
    bins = reliability_bins(y_true, probs, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins))


def reliability_bins(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """The non-empty confidence bins ECE is computed from: each bin's (lo, hi] edges,
    example count, mean confidence and accuracy. The report's reliability diagram draws
    these, so the plot and the ECE figure beside it come from the same numbers."""
    y_true = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.digitize(confidence, edges[1:-1], right=True)
    out = []
    for b in range(n_bins):
        in_bin = bin_ids == b
        if in_bin.any():
            out.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "count": int(in_bin.sum()),
                    "confidence": float(confidence[in_bin].mean()),
                    "accuracy": float(correct[in_bin].mean()),
                }
            )
    return out


def lm_metrics(
    total_loss: float,
    total_tokens: int,
    correct: int | None = None,
    token_accuracy_name: str = "mlm_accuracy",
) -> dict[str, Any]:
    """Mean per-token loss, perplexity and (when `correct` is given) token accuracy.

    `total_loss` is the loss summed over `total_tokens` tokens. Perplexity is capped at
    exp(50) so a diverging model reports a huge number instead of overflowing to inf.
    """
    if total_tokens <= 0:
        raise ValueError("no tokens to compute language-model metrics on")
    loss = float(total_loss) / total_tokens
    out: dict[str, Any] = {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "num_tokens": int(total_tokens),
    }
    if correct is not None:
        out[token_accuracy_name] = float(correct) / total_tokens
    return out


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float | int]:
    """The scalar top-level entries only (for `--json` output and metrics.jsonl)."""
    flat: dict[str, float | int] = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, (int, np.integer)):
            flat[key] = int(value)
        elif isinstance(value, (float, np.floating)):
            flat[key] = float(value)
    return flat
