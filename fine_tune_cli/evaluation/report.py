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
from dataclasses import dataclass
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
MAX_GENERATED_CHARS = 400  # sampled continuations: long enough to judge the text
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
    header: list[tuple[str, str]] | None = None,
    class_counts: tuple[list[str], list[list[str]]] | None = None,
    best_metric: str | None = None,
    best_step: int | None = None,
    comparison: dict[str, Any] | None = None,
    examples_title: str = "Examples",
) -> dict[str, str]:
    """Write metrics.json, report.md, report.html and the plots into `out_dir`.

    Returns name -> path of every file written (`metrics`, `report_md`, `report_html`,
    and `confusion_matrix_png` / `training_curves_png` / `reliability_png` when there is
    something to plot). `plots` are extra PNGs made by the caller (file name -> bytes,
    e.g. misclassified.png for images), written and embedded like the others, keyed
    `<stem>_png`. `header` is the run's header block (evaluation/summary.py),
    `class_counts` its examples per class and split, `comparison` the side-by-side
    table of `--compare` (evaluate.compare_metrics). Curves show the validation
    `best_metric`, the loss and (when logged) perplexity only: at most 4 series per plot.
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
    images: dict[str, Plot] = {}  # file name -> plot, embedded into the HTML

    def add(name: str, plot: Plot | None) -> None:
        if plot is None:
            return
        path = out_dir / name
        _write_atomic(path, plot.png)
        written[f"{path.stem}_png"] = str(path)
        images[name] = plot

    if matrix:
        add("confusion_matrix.png", _confusion_matrix_png(np.asarray(matrix), label_names))
    if history:
        add("training_curves.png", _training_curves_png(history, best_metric))
    if metrics.get("reliability"):
        add("reliability.png", _reliability_png(metrics["reliability"], metrics.get("ece")))
    for name, png in (plots or {}).items():
        add(name, Plot(png, []))

    sections = [
        *_header_sections(header, class_counts),
        *_sections(metrics, label_names, [], comparison),
        *_history_sections(history, best_step),
    ]
    if examples:
        sections.append(_examples_section(examples, examples_title))
    # The reliability diagram sits in the calibration section, next to the ECE figure.
    placed = {name for sec in sections for name in sec.images}
    loose = [name for name in images if name not in placed]
    md_path = out_dir / "report.md"
    _write_atomic(md_path, _markdown(title, sections, loose).encode("utf-8"))
    html_path = out_dir / "report.html"
    _write_atomic(html_path, _html(title, sections, images, loose).encode("utf-8"))
    written["report_md"] = str(md_path)
    written["report_html"] = str(html_path)

    # metrics.json last: its presence means the whole report was written.
    json_path = out_dir / "metrics.json"
    text = json.dumps(metrics, indent=2, sort_keys=True, default=_json_default) + "\n"
    _write_atomic(json_path, text.encode("utf-8"))
    written["metrics"] = str(json_path)
    return written


@dataclass
class Plot:
    """A PNG and the series drawn in it (legend labels, all panels): the HTML names
    them in the caption and `data-series`, so a reader (and a test) can count them."""

    png: bytes
    series: list[str]


@dataclass
class Section:
    """One table of the report (rendered as markdown or HTML), with plots placed
    right after it."""

    heading: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    images: tuple[str, ...] = ()
    css_class: str = ""


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


def _clip_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    text = " ".join(str(text).split())  # newlines would break a table row
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _header_sections(
    header: list[tuple[str, str]] | None,
    class_counts: tuple[list[str], list[list[str]]] | None,
) -> list[Section]:
    out = []
    if header:
        rows = [[k, v] for k, v in header]
        out.append(Section("Run", ["field", "value"], rows, css_class="run-header"))
    if class_counts and class_counts[0]:
        head, rows = class_counts
        out.append(Section("Data", head, rows, "Examples per class and split (prepared data)."))
    return out


def _sections(
    metrics: dict[str, Any],
    label_names: list[str],
    examples: list[dict[str, Any]],
    comparison: dict[str, Any] | None = None,
) -> list[Section]:
    """The metric tables: all scalars, baseline, calibration, comparison, per class."""
    sections = []
    scalars = flat_metrics(metrics)
    rank = {name: i for i, name in enumerate(METRIC_ORDER)}
    names = sorted(scalars, key=lambda k: (rank.get(k, len(rank)), k))
    sections.append(Section("Metrics", ["metric", "value"], [[k, _fmt(scalars[k])] for k in names]))

    if "baseline_accuracy" in scalars:
        sections.append(_baseline_section(metrics, scalars))
    if "ece" in scalars and metrics.get("reliability"):
        sections.append(
            Section(
                "Calibration",
                ["metric", "value"],
                [["ece", _fmt(scalars["ece"])]],
                "Expected calibration error over the confidence bins drawn in the"
                " reliability diagram (the gap between bar and diagonal, weighted by count).",
                images=("reliability.png",),
            )
        )
    if comparison:
        sections.append(_comparison_section(comparison))

    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and per_class:
        columns = ["precision", "recall", "f1", "support"]
        rows = [
            [str(label)] + [_fmt(figures.get(c, "")) for c in columns]
            for label, figures in per_class.items()
        ]
        sections.append(Section("Per class", ["class", *columns], rows))

    matrix = metrics.get("confusion_matrix")
    if matrix:
        names_ = (
            label_names if len(label_names) == len(matrix) else [str(i) for i in range(len(matrix))]
        )
        rows = [[names_[i]] + [str(int(c)) for c in row] for i, row in enumerate(matrix)]
        sections.append(
            Section(
                "Confusion matrix", ["true \\ pred", *names_], rows, "Rows: true; columns: pred."
            )
        )

    if examples:
        sections.append(_examples_section(examples, "Examples"))
    return sections


def _baseline_section(metrics: dict[str, Any], scalars: dict[str, Any]) -> Section:
    info = metrics.get("baseline") or {}
    rows = [
        ["this model", _fmt(scalars.get("accuracy", "")), _fmt(scalars.get("f1_macro", ""))],
        [
            str(info.get("model", "baseline")),
            _fmt(scalars["baseline_accuracy"]),
            _fmt(scalars.get("baseline_f1_macro", "")),
        ],
    ]
    if "majority_baseline" in scalars:
        rows.append(["majority class", _fmt(scalars["majority_baseline"]), ""])
    note = "scikit-learn fitted on the run's train split, scored on this split"
    if info.get("train_rows") and info.get("train_rows") != info.get("train_rows_total"):
        note += (
            f"; fitted on a seeded subsample of {info['train_rows']:,} of"
            f" {info['train_rows_total']:,} train rows"
        )
    return Section("Baseline", ["model", "accuracy", "f1_macro"], rows, note + ".")


def _comparison_section(comparison: dict[str, Any]) -> Section:
    rows = []
    for name, entry in comparison["table"].items():
        mark = {"this": "this run", "other": "other run"}.get(entry.get("better") or "", "")
        rows.append(
            [
                name,
                _fmt(entry["this"]),
                _fmt(entry["other"]),
                _signed(entry["delta"]),
                mark,
            ]
        )
    note = (
        f"This run against {comparison['run_dir']} on the same split; delta = this − other."
        " 'better' follows each metric's direction (lower for loss, perplexity, ece)."
    )
    return Section("Comparison", ["metric", "this run", "other run", "delta", "better"], rows, note)


def _signed(value: Any) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):+d}"
    if isinstance(value, (float, np.floating)) and math.isfinite(value):
        return f"{float(value):+.4f}"
    return _fmt(value)


MAX_HISTORY_ROWS = 30


def _history_sections(history: list[dict[str, Any]] | None, best_step: int | None) -> list[Section]:
    """Every validation metric at every (or, for long runs, an even sample of) eval
    step: the figures the curves leave out."""
    evals = [e for e in history or [] if any(k.startswith("eval_") for k in e)]
    if not evals:
        return []
    keys: list[str] = []
    for entry in evals:
        keys += [
            k
            for k, v in entry.items()
            if k.startswith("eval_") and k not in keys and isinstance(v, (int, float))
        ]
    rank = {name: i for i, name in enumerate(METRIC_ORDER)}
    keys.sort(key=lambda k: (rank.get(k[5:], len(rank)), k))
    shown = list(range(len(evals)))
    note = "Validation metrics at each evaluation."
    if len(evals) > MAX_HISTORY_ROWS:
        picks = set(np.linspace(0, len(evals) - 1, MAX_HISTORY_ROWS).round().astype(int).tolist())
        picks |= {i for i, e in enumerate(evals) if e.get("step") == best_step}
        shown = sorted(picks)
        note = f"Validation metrics at {len(shown)} of {len(evals)} evaluations (evenly spaced)."
    if best_step is not None:
        note += f" Best step: {best_step} (its model is best/)."
    rows = []
    for i in shown:
        entry = evals[i]
        step = str(entry.get("step", ""))
        if best_step is not None and entry.get("step") == best_step:
            step += " (best)"
        rows.append([step] + [_fmt(entry[k]) if k in entry else "" for k in keys])
    return [Section("Validation history", ["step", *(k[5:] for k in keys)], rows, note)]


def _examples_section(examples: list[dict[str, Any]], heading: str) -> Section:
    seen = [c for c in EXAMPLE_COLUMNS if any(c in ex for ex in examples)]
    for ex in examples:
        seen += [k for k in ex if k not in seen]
    shown = examples[:MAX_EXAMPLES]
    limit = MAX_TEXT_CHARS if heading == "Examples" else MAX_GENERATED_CHARS
    rows = [[_clip_text(_fmt(ex.get(c, "")), limit) for c in seen] for ex in shown]
    note = f"Showing {len(shown)} of {len(examples)}." if len(examples) > len(shown) else ""
    return Section(heading, seen, rows, note)


def _markdown(title: str, sections: list[Section], image_names: list[str]) -> str:
    def cell(text: str) -> str:
        # `\<` keeps renderers from treating example text as raw HTML.
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<")

    lines = [f"# {title}", ""]
    for sec in sections:
        lines += [f"## {sec.heading}", ""]
        if sec.note:
            lines += [sec.note, ""]
        lines.append("| " + " | ".join(cell(h) for h in sec.header) + " |")
        lines.append("|" + "|".join("---" for _ in sec.header) + "|")
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in sec.rows]
        lines.append("")
        for name in sec.images:
            lines += [f"![{_caption(name)}]({name})", ""]
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
table.run-header td.num { text-align: left; }  /* a field list, not a column of figures */
p.note { color: #666; font-size: 0.85rem; }
img { max-width: 100%; height: auto; }
figure { margin: 1rem 0; } figcaption { color: #666; font-size: 0.85rem; }
"""
# The report is opened from disk, often offline and possibly long after the run: it
# loads nothing and runs nothing (plots are inline data: URIs, styles inline).
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _html(title: str, sections: list[Section], images: dict[str, Plot], loose: list[str]) -> str:
    def is_number(text: str) -> bool:
        try:
            float(text.replace(",", ""))
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
    for sec in sections:
        ident = sec.heading.lower().replace(" ", "-")
        parts.append(f'<section id="{esc(ident)}"><h2>{esc(sec.heading)}</h2>')
        if sec.note:
            parts.append(f'<p class="note">{esc(sec.note)}</p>')
        css = f' class="{esc(sec.css_class)}"' if sec.css_class else ""
        parts.append(f"<table{css}><thead><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in sec.header]
        parts.append("</tr></thead><tbody>")
        for row in sec.rows:
            cells = [
                f'<td class="num">{esc(c)}</td>' if is_number(c) else f"<td>{esc(c)}</td>"
                for c in row
            ]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
        parts += [_figure(name, images[name]) for name in sec.images if name in images]
        parts.append("</section>")
    if loose:
        parts.append('<section id="plots"><h2>Plots</h2>')
        parts += [_figure(name, images[name]) for name in loose]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _figure(name: str, plot: Plot) -> str:
    esc = html.escape
    data = base64.b64encode(plot.png).decode("ascii")
    caption = esc(_caption(name))
    series = f" Series: {esc(', '.join(plot.series))}." if plot.series else ""
    return (
        f'<figure data-series="{len(plot.series)}">'
        f'<img alt="{caption}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption} ({esc(name)}).{series}</figcaption></figure>"
    )


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


def _confusion_matrix_png(matrix: np.ndarray, label_names: list[str]) -> Plot:
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
    return Plot(_figure_png(plt, fig), [])


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


MAX_SERIES = 4  # per plot: more lines than this are not read, only looked at


def _training_curves_png(history: list[dict[str, Any]], best_metric: str | None) -> Plot | None:
    """Train and validation loss; the validation best metric; validation perplexity
    when logged (language models). Every other validation figure is in the
    "Validation history" table, not on a plot. None when nothing is plottable."""
    panels: list[tuple[str, dict[str, tuple[list[float], list[float]]]]] = []
    loss = {
        "train loss": _series(history, "loss"),
        "validation loss": _series(history, "eval_loss"),
    }
    panels.append(("loss", loss))
    extra = [m for m in (best_metric, "perplexity") if m and m not in ("loss",)]
    for name in dict.fromkeys(extra):
        panels.append((name, {f"validation {name}": _series(history, f"eval_{name}")}))
    panels = [(label, {k: v for k, v in series.items() if v[0]}) for label, series in panels]
    panels = [(label, series) for label, series in panels if series]
    if not panels:
        return None

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels, strict=True):
        for key, (xs, ys) in series.items():
            # a line alone draws nothing for one point (a short run logs loss once)
            style = "o-" if key.startswith("validation") or len(xs) == 1 else "-"
            ax.plot(xs, ys, style, label=_plot_label(key), markersize=3, linewidth=1.2)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_plot_label(ylabel))
        ax.set_title(_plot_label(ylabel if ylabel == "loss" else f"validation {ylabel}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Training curves")
    fig.tight_layout()
    series = _legend_labels(fig)
    assert len(series) <= MAX_SERIES, series  # by construction: 2 + 1 + 1 at most
    return Plot(_figure_png(plt, fig), series)


def _legend_labels(fig: Any) -> list[str]:
    """The labelled artists of every panel: what the legends show, i.e. the series."""
    labels: list[str] = []
    for ax in fig.axes:
        labels += [label.replace(r"\$", "$") for label in ax.get_legend_handles_labels()[1]]
    return labels


def _reliability_png(bins: list[dict[str, float]], ece: float | None) -> Plot:
    """Accuracy against mean confidence per bin (bars, widths = bin edges) with the
    diagonal of perfect calibration; the bars' gaps are what the ECE averages."""
    plt = _pyplot()
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lo = [b["lo"] for b in bins]
    width = [b["hi"] - b["lo"] for b in bins]
    ax.bar(
        lo,
        [b["accuracy"] for b in bins],
        width=width,
        align="edge",
        edgecolor="#1f4e79",
        color="#6fa8dc",
        label="accuracy per bin",
    )
    ax.plot([0, 1], [0, 1], "--", color="#888", label="perfect calibration")
    ax.plot(
        [b["confidence"] for b in bins],
        [b["accuracy"] for b in bins],
        "o",
        color="#c0392b",
        markersize=3,
        label="bin (mean confidence, accuracy)",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.03)  # bins at accuracy 1 stay visible
    ax.set_ylabel("accuracy")
    title = "Reliability diagram" + (f" (ECE {ece:.4f})" if ece is not None else "")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    ax_count.bar(lo, [b["count"] for b in bins], width=width, align="edge", color="#bbb")
    ax_count.set_xlabel("confidence (max probability)")
    ax_count.set_ylabel("examples")
    fig.tight_layout()
    return Plot(_figure_png(plt, fig), _legend_labels(fig))
