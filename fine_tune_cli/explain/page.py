"""The self-contained HTML page of `ftc explain` (and eval's explanations): inline CSS,
images as base64 PNG data URIs, no scripts or external files, so it can be mailed or
attached to a ticket as one file. The explainers draw each example's body with the
helpers here (a shade per score, a PNG data URI)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

POSITIVE = (220, 38, 38)  # toward the explained class
NEGATIVE = (37, 99, 235)  # against it

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.4em; } .facts { color: #555; font-size: 0.9em; }
.example { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; }
.head { font-size: 0.9em; color: #333; margin-bottom: 0.5em; }
.text { line-height: 1.9; white-space: pre-wrap; font-family: ui-monospace, monospace;
        font-size: 0.85em; }
.text span { border-radius: 3px; padding: 0 1px; }
.top { font-size: 0.85em; color: #444; margin-top: 0.5em; }
.images img { image-rendering: pixelated; margin-right: 1em; border: 1px solid #ccc; }
.legend span { padding: 0 0.4em; border-radius: 3px; }
"""


def shade(score: float, scale: float) -> str:
    """A CSS background for a score: red toward the class, blue against, opacity by
    |score| relative to the example's largest."""
    if scale <= 0 or score == 0:
        return "transparent"
    r, g, b = POSITIVE if score > 0 else NEGATIVE
    return f"rgba({r},{g},{b},{min(abs(score) / scale, 1.0) * 0.85:.3f})"


def png_uri(rgb: np.ndarray) -> str:
    """A uint8 (H, W, 3) array as a data: URI of a PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def example_head(row: dict[str, Any]) -> str:
    """The line above each example: id, prediction, explained class, IG's completeness."""
    parts = [
        f"<b>{html.escape(str(row['id']))}</b>",
        f"predicted <b>{html.escape(row['label'])}</b> ({row['prob']:.3f})",
    ]
    if "true" in row:
        parts.append(f"true <b>{html.escape(row['true'])}</b>")
    if row["target"] != row["label"]:
        parts.append(f"explaining <b>{html.escape(row['target'])}</b> ({row['target_prob']:.3f})")
    if row.get("relative_delta") is not None:
        parts.append(
            f"p(input) {row['f_input']:.3f} &minus; p(baseline) {row['f_baseline']:.3f};"
            f" IG convergence delta {row['convergence_delta']:.2g}"
            f" ({100 * row['relative_delta']:.1f}%)"
        )
    if "target_prob_without_top" in row:
        parts.append(
            f"p({html.escape(row['target'])}) without its top {len(row['top'])}:"
            f" {row['target_prob_without_top']:.3f}"
        )
    if row.get("filtered"):
        parts.append(f"<i>the training pipeline would drop it ({html.escape(row['filtered'])})</i>")
    return '<div class="head">' + " &middot; ".join(parts) + "</div>"


def render_page(title: str, facts: list[str], bodies: list[str]) -> str:
    legend = (
        '<p class="legend"><span style="background:rgba(220,38,38,0.6)">toward the explained'
        ' class</span> <span style="background:rgba(37,99,235,0.6)">against it</span>'
        " (shade: |score| relative to the example's largest)</p>"
    )
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p class='facts'>{' &middot; '.join(html.escape(f) for f in facts)}</p>{legend}"
        + "".join(f'<div class="example">{body}</div>' for body in bodies)
        + "</body></html>\n"
    )
