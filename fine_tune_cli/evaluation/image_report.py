"""Image-specific report plots: a grid of misclassified examples (most confident first)
with their true and predicted labels, written as misclassified.png in the eval dir."""

from __future__ import annotations

from typing import Any

import numpy as np

from fine_tune_cli.evaluation.report import _figure_png, _plot_label, _pyplot

MAX_SHOWN = 36
COLUMNS = 6


def image_plots(details: dict[str, Any], label_names: list[str]) -> dict[str, bytes]:
    """{"misclassified.png": png} for an image classification eval, else {}."""
    if details.get("pixels") is None or details.get("probs") is None or not label_names:
        return {}
    return {"misclassified.png": misclassified_grid_png(details, label_names)}


def misclassified_grid_png(details: dict[str, Any], label_names: list[str]) -> bytes:
    """Up to MAX_SHOWN wrong predictions, most confident first, titled true -> predicted."""
    probs, y, pixels = details["probs"], details["labels"], details["pixels"]
    pred = probs.argmax(1)
    wrong = np.nonzero(pred != y)[0]
    total = len(wrong)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:MAX_SHOWN]
    plt = _pyplot()
    if not len(wrong):
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no misclassified examples ({len(y)} images)", ha="center")
        return _figure_png(plt, fig)
    rows = -(-len(wrong) // COLUMNS)
    cols = min(COLUMNS, len(wrong))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        image = np.asarray(pixels[i]).transpose(1, 2, 0)  # (C, H, W) uint8 -> (H, W, C)
        if image.shape[2] == 1:
            ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(
            f"true {_short(label_names[y[i]])}\npred {_short(label_names[pred[i]])}"
            f" ({probs[i, pred[i]]:.2f})",
            fontsize=8,
        )
    fig.suptitle(f"Misclassified: {len(wrong)} of {total} shown (most confident first)")
    fig.tight_layout()
    return _figure_png(plt, fig)


def _short(name: str) -> str:
    return _plot_label(name if len(name) <= 14 else name[:13] + "…")
