"""Metrics against tiny hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fine_tune_cli.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    flat_metrics,
    lm_metrics,
)

CONTRACT_SCALARS = {
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_micro",
    "recall_micro",
    "f1_micro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "ece",
    "loss",
}


def one_hot_probs(pred: list[int], num_classes: int, confidence: float = 0.8) -> np.ndarray:
    """Probabilities whose argmax is `pred`, the rest spread evenly."""
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((len(pred), num_classes), rest)
    probs[np.arange(len(pred)), pred] = confidence
    return probs


@pytest.fixture
def three_class() -> dict:
    # Confusion matrix (rows true, cols pred):
    #   [[3, 1, 0],
    #    [0, 1, 1],
    #    [0, 0, 2]]
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = [0, 0, 0, 1, 1, 2, 2, 2]
    return classification_metrics(y_true, one_hot_probs(pred, 3), ["a", "b", "c"], loss=0.5)


def test_three_class_matches_hand_computation(three_class: dict) -> None:
    m = three_class
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    # per class: precision 3/3, 1/2, 2/3; recall 3/4, 1/2, 2/2; f1 6/7, 1/2, 4/5
    assert m["precision_macro"] == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert m["recall_macro"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert m["f1_macro"] == pytest.approx((6 / 7 + 1 / 2 + 4 / 5) / 3)
    # micro averages equal accuracy for single-label multi-class
    for name in ("precision_micro", "recall_micro", "f1_micro"):
        assert m[name] == pytest.approx(6 / 8)
    # weighted by support 4, 2, 2
    assert m["f1_weighted"] == pytest.approx((4 * 6 / 7 + 2 * 1 / 2 + 2 * 4 / 5) / 8)
    assert m["precision_weighted"] == pytest.approx((4 * 1 + 2 * 1 / 2 + 2 * 2 / 3) / 8)
    assert m["recall_weighted"] == pytest.approx(6 / 8)
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 0.75, "f1": 6 / 7, "support": 4}
    )
    assert m["per_class"]["b"]["support"] == 2
    assert m["per_class"]["c"]["f1"] == pytest.approx(4 / 5)
    assert m["majority_baseline"] == pytest.approx(4 / 8)
    assert m["num_examples"] == 8
    assert m["loss"] == 0.5
    assert "roc_auc" not in m


def test_output_is_plain_json(three_class: dict) -> None:
    text = json.dumps(three_class)
    assert json.loads(text) == three_class
    for key in CONTRACT_SCALARS:
        assert type(three_class[key]) is float, key
    assert type(three_class["num_examples"]) is int


def test_confusion_matrix_is_square_when_classes_are_missing() -> None:
    # class 2 is neither true nor predicted: still a 3x3 matrix and a per-class entry
    m = classification_metrics(np.array([0, 1, 1]), one_hot_probs([0, 1, 0], 3), ["x", "y", "z"])
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert m["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "loss" not in m


def test_binary_roc_auc() -> None:
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, probs, ["neg", "pos"])
    assert m["roc_auc"] == pytest.approx(0.75)


def test_binary_roc_auc_absent_when_one_class_present() -> None:
    m = classification_metrics(np.array([1, 1]), one_hot_probs([1, 0], 2), ["neg", "pos"])
    assert "roc_auc" not in m


def test_ece_zero_for_confident_correct_predictions() -> None:
    y = np.array([0, 1, 2, 1])
    probs = np.eye(3)[y]
    assert expected_calibration_error(y, probs) == 0.0
    assert classification_metrics(y, probs, ["a", "b", "c"])["ece"] == 0.0


def test_ece_hand_computed() -> None:
    # both examples at confidence 0.8 (one bin), one correct: |0.5 - 0.8| = 0.3
    y = np.array([0, 1])
    probs = np.array([[0.8, 0.2], [0.8, 0.2]])
    assert expected_calibration_error(y, probs) == pytest.approx(0.3)


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(np.array([0, 1]), one_hot_probs([0, 1], 3), ["a", "b"])
    with pytest.raises(ValueError, match="label ids"):
        classification_metrics(np.array([0, 5]), one_hot_probs([0, 1], 2), ["a", "b"])


def test_lm_metrics() -> None:
    m = lm_metrics(total_loss=20.0, total_tokens=10, correct=4)
    assert m["loss"] == pytest.approx(2.0)
    assert m["perplexity"] == pytest.approx(math.exp(2.0))
    assert m["mlm_accuracy"] == pytest.approx(0.4)
    assert m["num_tokens"] == 10
    json.dumps(m)


def test_lm_metrics_accuracy_name_and_overflow_cap() -> None:
    m = lm_metrics(total_loss=1e6, total_tokens=1, correct=0, token_accuracy_name="token_acc")
    assert m["perplexity"] == pytest.approx(math.exp(50))
    assert math.isfinite(m["perplexity"])
    assert "token_acc" in m and "mlm_accuracy" not in m
    assert "mlm_accuracy" not in lm_metrics(1.0, 1)


def test_flat_metrics_keeps_only_scalars(three_class: dict) -> None:
    flat = flat_metrics(three_class)
    assert "per_class" not in flat and "confusion_matrix" not in flat
    assert CONTRACT_SCALARS.issubset(flat)
    assert flat["num_examples"] == 8
    assert flat_metrics({"a": np.float32(0.5), "b": True, "c": "x", "d": np.int64(3)}) == {
        "a": 0.5,
        "d": 3,
    }
