"""Evaluation reports: metrics.json, report.md, a self-contained report.html and PNG plots.

Every file is written atomically (temp file in the same directory, then os.replace), so
a crash or a full disk never leaves a half-written metrics.json behind.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fine_tune_cli.errors import OutputError
from fine_tune_cli.evaluation.metrics import flat_metrics

# Contract metrics first, in the contract's order; anything else follows alphabetically.
METRIC_ORDER = (
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
    "roc_auc",
    "ece",
    "loss",
    "perplexity",
    "mlm_accuracy",
    "nsp_accuracy",
    "reconstruction_loss",
    "samples_per_s",
    "tokens_per_s",
)
MAX_EXAMPLES = 50  # rows of the examples table; the report is for reading, not a dump
MAX_TEXT_CHARS = 120
ANNOTATE_MAX_CLASSES = 20
EXAMPLE_COLUMNS = ("id", "text", "true", "pred", "score")


def write_report(
    out_dir: Path,
    metrics: dict[str, Any],
    *,
    title: str,
    label_names: list[str] | None = None,
    history: list[dict[str, Any]] | None = None,
    examples: list[dict[str, Any]] | None = None,
    plots: dict[str, bytes] | None = None,
) -> dict[str, str]:
    """Write metrics.json, report.md, report.html and the plots into `out_dir`.

    Returns name -> path of every file written (`metrics`, `report_md`, `report_html`,
    and `confusion_matrix_png` / `training_curves_png` when there is something to plot).
    `plots` are extra PNGs made by the caller (file name -> bytes, e.g. misclassified.png
    for images), written and embedded like the others, keyed `<stem>_png`.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create report directory {out_dir}: {_reason(e)}") from e

    matrix = metrics.get("confusion_matrix")
    if label_names is None:
        per_class = metrics.get("per_class")
        if isinstance(per_class, dict):
            label_names = [str(k) for k in per_class]
        elif matrix:
            label_names = [str(i) for i in range(len(matrix))]
        else:
            label_names = []

    written: dict[str, str] = {}
    images: dict[str, bytes] = {}  # file name -> PNG bytes, embedded into the HTML
    if matrix:
        png = _confusion_matrix_png(np.asarray(matrix), label_names)
        path = out_dir / "confusion_matrix.png"
        _write_atomic(path, png)
        written["confusion_matrix_png"] = str(path)
        images[path.name] = png
    if history:
        png = _training_curves_png(history)
        if png is not None:
            path = out_dir / "training_curves.png"
            _write_atomic(path, png)
            written["training_curves_png"] = str(path)
            images[path.name] = png
    for name, png in (plots or {}).items():
        path = out_dir / name
        _write_atomic(path, png)
        written[f"{path.stem}_png"] = str(path)
        images[path.name] = png

    sections = _sections(metrics, label_names, examples or [])
    md_path = out_dir / "report.md"
    _write_atomic(md_path, _markdown(title, sections, list(images)).encode("utf-8"))
    html_path = out_dir / "report.html"
    _write_atomic(html_path, _html(title, sections, images).encode("utf-8"))
    written["report_md"] = str(md_path)
    written["report_html"] = str(html_path)

    # metrics.json last: its presence means the whole report was written.
    json_path = out_dir / "metrics.json"
    text = json.dumps(metrics, indent=2, sort_keys=True, default=_json_default) + "\n"
    _write_atomic(json_path, text.encode("utf-8"))
    written["metrics"] = str(json_path)
    return written


# --- files -----------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it."""
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as e:
        raise OutputError(f"cannot write {path}: {_reason(e)}") from e
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays sneak in from callers; JSON wants plain Python.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# --- content shared by md and html -----------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}" if math.isfinite(value) else str(float(value))
    return str(value)


def _clip_text(text: str) -> str:
    text = " ".join(str(text).split())  # newlines would break a table row
    if len(text) > MAX_TEXT_CHARS:
        text = text[: MAX_TEXT_CHARS - 1] + "…"
    return text


def _sections(
    metrics: dict[str, Any], label_names: list[str], examples: list[dict[str, Any]]
) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(heading, header, rows, note) tables, rendered as markdown or HTML."""
    sections = []
    scalars = flat_metrics(metrics)
    rank = {name: i for i, name in enumerate(METRIC_ORDER)}
    names = sorted(scalars, key=lambda k: (rank.get(k, len(rank)), k))
    sections.append(("Metrics", ["metric", "value"], [[k, _fmt(scalars[k])] for k in names], ""))

    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and per_class:
        columns = ["precision", "recall", "f1", "support"]
        rows = [
            [str(label)] + [_fmt(figures.get(c, "")) for c in columns]
            for label, figures in per_class.items()
        ]
        sections.append(("Per class", ["class", *columns], rows, ""))

    matrix = metrics.get("confusion_matrix")
    if matrix:
        names_ = (
            label_names if len(label_names) == len(matrix) else [str(i) for i in range(len(matrix))]
        )
        rows = [[names_[i]] + [str(int(c)) for c in row] for i, row in enumerate(matrix)]
        sections.append(
            ("Confusion matrix", ["true \\ pred", *names_], rows, "Rows: true; columns: pred.")
        )

    if examples:
        seen = [c for c in EXAMPLE_COLUMNS if any(c in ex for ex in examples)]
        for ex in examples:
            seen += [k for k in ex if k not in seen]
        shown = examples[:MAX_EXAMPLES]
        rows = [[_clip_text(_fmt(ex.get(c, ""))) for c in seen] for ex in shown]
        note = f"Showing {len(shown)} of {len(examples)}." if len(examples) > len(shown) else ""
        sections.append(("Examples", seen, rows, note))
    return sections


def _markdown(title: str, sections: list, image_names: list[str]) -> str:
    def cell(text: str) -> str:
        # `\<` keeps renderers from treating example text as raw HTML.
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<")

    lines = [f"# {title}", ""]
    for heading, header, rows, note in sections:
        lines += [f"## {heading}", ""]
        if note:
            lines += [note, ""]
        lines.append("| " + " | ".join(cell(h) for h in header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    if image_names:
        lines += ["## Plots", ""]
        for name in image_names:
            lines += [f"![{_caption(name)}]({name})", ""]
    return "\n".join(lines)


def _caption(image_name: str) -> str:
    """confusion_matrix.png -> Confusion matrix."""
    return image_name.removesuffix(".png").replace("_", " ").capitalize()


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 60rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; white-space: nowrap; }
td { overflow-wrap: anywhere; }  /* a long unbroken token must not widen the page */
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
p.note { color: #666; font-size: 0.85rem; }
img { max-width: 100%; height: auto; }
figure { margin: 1rem 0; } figcaption { color: #666; font-size: 0.85rem; }
"""
# The report is opened from disk, often offline and possibly long after the run: it
# loads nothing and runs nothing (plots are inline data: URIs, styles inline).
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _html(title: str, sections: list, images: dict[str, bytes]) -> str:
    def is_number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for heading, header, rows, note in sections:
        parts.append(f"<h2>{esc(heading)}</h2>")
        if note:
            parts.append(f'<p class="note">{esc(note)}</p>')
        parts.append("<table><thead><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in header]
        parts.append("</tr></thead><tbody>")
        for row in rows:
            cells = [
                f'<td class="num">{esc(c)}</td>' if is_number(c) else f"<td>{esc(c)}</td>"
                for c in row
            ]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
    if images:
        parts.append("<h2>Plots</h2>")
        for name, png in images.items():
            data = base64.b64encode(png).decode("ascii")
            caption = esc(_caption(name))
            parts.append(
                f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
                f"<figcaption>{caption} ({esc(name)})</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- plots -----------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or CI
    import matplotlib.pyplot as plt

    return plt


def _figure_png(plt, fig) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def _plot_label(text: str) -> str:
    """`text` as matplotlib draws it literally. Label names come from user data, and a
    pair of `$` would otherwise be parsed as mathtext: rendered as math or, for an
    unknown command such as `$\\x$`, fail the whole eval."""
    return text.replace("$", r"\$")


def _confusion_matrix_png(matrix: np.ndarray, label_names: list[str]) -> bytes:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    n = matrix.shape[0]
    if len(label_names) != n:
        label_names = [str(i) for i in range(n)]
    ticks = [_plot_label(name if len(name) <= 20 else name[:19] + "…") for name in label_names]
    side = min(max(4.0, 0.45 * n + 2.0), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts, not fractions
    small = n > ANNOTATE_MAX_CLASSES
    font = 5 if small else 9
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(ticks, rotation=90 if small else 45, ha="center" if small else "right")
    ax.set_yticklabels(ticks)
    ax.tick_params(labelsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if not small:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                color = "white" if matrix[i, j] > threshold else "black"
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color)
    ax.set_title("Confusion matrix")
    return _figure_png(plt, fig)


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for entry in history:
        step, value = entry.get("step"), entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(step, (int, float)) and math.isfinite(value):
            xs.append(float(step))
            ys.append(float(value))
    return xs, ys


def _is_metric_curve(key: str) -> bool:
    # Loss-like, throughput and count figures have their own scales; keep them off the
    # metric axis so accuracy/F1 stay readable.
    return (
        key.startswith("eval_")
        and not key.endswith(("loss", "_per_s"))
        and not key.startswith(("eval_num_", "eval_perplexity"))
    )


def _training_curves_png(history: list[dict[str, Any]]) -> bytes | None:
    """Train and eval loss over steps, and eval metrics in a second panel; None if empty."""
    losses = {k: _series(history, k) for k in ("loss", "eval_loss")}
    losses = {k: v for k, v in losses.items() if v[0]}
    keys = sorted({k for entry in history for k in entry if _is_metric_curve(k)})
    curves = {k: _series(history, k) for k in keys}
    curves = {k: v for k, v in curves.items() if v[0]}
    if not losses and not curves:
        return None

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = [
        (series, ylabel) for series, ylabel in ((losses, "loss"), (curves, "metric")) if series
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.0), squeeze=False)
    for ax, (series, ylabel) in zip(axes[0], panels, strict=True):
        for key, (xs, ys) in series.items():
            # a line alone draws nothing for one point (a short run logs loss once)
            style = "o-" if key.startswith("eval_") or len(xs) == 1 else "-"
            ax.plot(xs, ys, style, label=key, markersize=3, linewidth=1.2)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_title("Training curves")
    fig.tight_layout()
    return _figure_png(plt, fig)
