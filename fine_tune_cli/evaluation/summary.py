"""The report's header block: what a reader needs to judge a run without opening other
files — recipe, model and its size, data counts per split and class, steps, wall time,
throughput, device and versions. Read from the run dir (provenance.json, metrics.jsonl),
the prepared data's manifest and the loaded model; whatever is missing (a stand-alone
model dir has no run) is left out rather than guessed."""

from __future__ import annotations

import statistics
from typing import Any

SPLIT_ORDER = ("train", "validation", "test")


def run_header(
    recipe: Any,
    prepared_manifest: dict[str, Any],
    provenance: dict[str, Any],
    history: list[dict[str, Any]],
    num_parameters: int | None,
    evaluated: str,
) -> list[tuple[str, str]]:
    """(field, value) rows of the header block, in reading order."""
    rows: list[tuple[str, str]] = [("recipe", recipe.name)]
    model = recipe.model
    size = f" {model.size}" if getattr(model, "size", None) else ""
    rows.append(("model", f"{model.family}{size} ({model.task})"))
    if num_parameters is not None:
        rows.append(("parameters", f"{num_parameters:,} ({_short_count(num_parameters)})"))
    rows.append(("evaluated", evaluated))
    splits = prepared_manifest.get("splits") or {}
    if splits:
        counts = [f"{name} {int(info.get('examples', 0)):,}" for name, info in _ordered(splits)]
        rows.append(("data (examples)", " · ".join(counts)))
    summary = provenance.get("summary") or {}
    steps = summary.get("steps") or _last_step(history)
    if steps:
        epochs = summary.get("epochs")
        rows.append(("steps", f"{int(steps):,}" + (f" ({epochs} epochs)" if epochs else "")))
    if summary.get("seconds") is not None:
        rows.append(("wall time", _duration(float(summary["seconds"]))))
    for key, label in (("samples_per_s", "samples/s"), ("tokens_per_s", "tokens/s")):
        rate = train_rate(history, key)
        if rate is not None:
            rows.append((label, f"{rate:,.1f} (median of logged train steps)"))
    device = _device(provenance)
    if device:
        rows.append(("device", device))
    env = provenance.get("environment") or {}
    versions = [f"{k} {env[k]}" for k in ("torch", "transformers", "python", "ftc") if env.get(k)]
    if versions:
        rows.append(("versions", ", ".join(versions)))
    if provenance.get("finished") or provenance.get("started"):
        rows.append(
            ("trained", f"{provenance.get('started', '?')} → {provenance.get('finished', '?')}")
        )
    return rows


def class_counts(prepared_manifest: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of examples per class and split; ([], []) without labels."""
    splits = [
        (n, i) for n, i in _ordered(prepared_manifest.get("splits") or {}) if "label_counts" in i
    ]
    if not splits:
        return [], []
    labels = list(prepared_manifest.get("labels") or splits[0][1]["label_counts"])
    header = ["class"] + [name for name, _ in splits]
    rows = [
        [str(label)] + [str(int(i["label_counts"].get(label, 0))) for _, i in splits]
        for label in labels
    ]
    rows.append(
        ["total"] + [str(sum(int(v) for v in i["label_counts"].values())) for _, i in splits]
    )
    return header, rows


def train_rate(history: list[dict[str, Any]], key: str) -> float | None:
    """The median logged training rate (robust to the slow first steps and eval pauses)."""
    values = [
        float(e[key])
        for e in history
        if "split" not in e and isinstance(e.get(key), (int, float)) and e[key] > 0
    ]
    return statistics.median(values) if values else None


def _ordered(splits: dict[str, Any]) -> list[tuple[str, Any]]:
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return sorted(splits.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _last_step(history: list[dict[str, Any]]) -> int | None:
    steps = [e["step"] for e in history if isinstance(e.get("step"), int)]
    return max(steps) if steps else None


def _device(provenance: dict[str, Any]) -> str:
    device = provenance.get("device")
    if not device:
        return ""
    runtime = provenance.get("runtime") or {}
    parts = [str(device)]
    if runtime.get("device_name"):
        parts.append(f"({runtime['device_name']})")
    if provenance.get("world_size", 1) and int(provenance.get("world_size", 1)) > 1:
        parts.append(f"x{provenance['world_size']}")
    if provenance.get("precision"):
        parts.append(f", {provenance['precision']}")
    return " ".join(parts).replace(" ,", ",")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _short_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
