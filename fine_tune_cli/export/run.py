"""`ftc export`: write a format into a temp dir, gate it on parity with the torch model
on real validation examples, then publish it with a sha256 manifest (or publish nothing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from fine_tune_cli.errors import ConflictError, GateError, RecipeError, output_failure
from fine_tune_cli.faults import signal_at
from fine_tune_cli.recipe import ExportSpec, parse_override, validate_tree
from fine_tune_cli.runs import EXPORT
from fine_tune_cli.targets import load_model, prepared_for, resolve_target

log = logging.getLogger("ftc")

# export.* keys every format reads.
COMMON_KEYS = ("max_metric_drop", "parity_samples", "latency_runs")
# The recipe key behind each tolerance, per gate kind (named in gate-failure messages).
TOLERANCE_KEYS = {
    "exact": {"max_abs_diff": "export.max_abs_diff"},
    "int8": {
        "max_abs_diff": "export.int8_max_abs_diff",
        "min_agreement": "export.int8_min_agreement",
    },
    "metric": {},
}


def export_spec(
    base: ExportSpec, overrides: list[str], applies: set[str] | None = None, fmt: str = ""
) -> ExportSpec:
    """The recipe's export keys with the command-line overrides. An override of a key
    the chosen format does not read is an error, never silently ignored."""
    values = base.model_dump()
    given = []
    for text in overrides:
        key, value = parse_override(text)
        if not key.startswith("export."):
            raise RecipeError(f"override '{text}': export only takes export.* keys")
        values[key.removeprefix("export.")] = value
        given.append((text, key.removeprefix("export.")))
    tree = {"name": "x", "model": {"family": "bert"}, "data": {"source": {"path": "x"}}}
    spec = validate_tree(tree | {"export": values}, default_origin="export overrides").export
    unused = [
        f"override '{text}': export.{key} does not apply to --format {fmt}"
        f" (it reads: {', '.join(f'export.{k}' for k in sorted(applies))})"
        for text, key in given
        if applies is not None and key not in applies
    ]
    if unused:
        raise RecipeError(unused)
    return spec


def run_export(
    target_path: str, *, fmt: str, out: str | None, overrides: list[str], overwrite: bool
) -> dict[str, Any]:
    from fine_tune_cli.data.tokenizers import for_model_dir
    from fine_tune_cli.export import DEPRECATED_FORMATS
    from fine_tune_cli.export import parity as P
    from fine_tune_cli.export.base import output_names
    from fine_tune_cli.export.formats import EXPORTERS, ExportContext
    from fine_tune_cli.manifest import fsync_tree, write_manifest
    from fine_tune_cli.optional import require_all
    from fine_tune_cli.tasks import task_for

    out_name = fmt  # the default --out keeps the name asked for (scripts' paths stay valid)
    if fmt in DEPRECATED_FORMATS:
        fmt = DEPRECATED_FORMATS[fmt]
        log.warning(
            "--format %s is deprecated: it writes the %s format (see `ftc export --help`);"
            " use --format %s",
            out_name,
            fmt,
            fmt,
        )
    if fmt not in EXPORTERS:
        raise RecipeError(f"--format: {EXPORTERS.unknown_message(fmt)}")
    exporter = EXPORTERS.get(fmt)
    require_all(exporter.requires, f"--format {fmt}")  # before any slow work
    target = resolve_target(target_path)
    gate_keys = [k.removeprefix("export.") for k in TOLERANCE_KEYS[exporter.gate].values()]
    applies = {*COMMON_KEYS, *gate_keys, *exporter.options}
    spec = export_spec(target.recipe.export, overrides, applies, fmt)
    base = target.run.path if target.run else target.model_dir.parent
    out_dir = Path(out) if out else base / EXPORT / out_name
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConflictError(f"{out_dir}: output dir is not empty; pass --overwrite or --out")
    kind = task_for(target.recipe.model)
    if kind.not_exportable:  # e.g. mim: a pretraining model, no logits
        raise RecipeError(f"{target_path}: {kind.not_exportable}")
    prepared = prepared_for(target)
    task = kind.from_recipe(target.recipe, prepared)
    model = load_model(target)
    split = P.parity_split(prepared, spec.parity_samples)
    batch_size = target.recipe.train.eval_batch_size or 2 * target.recipe.train.batch_size
    example = P.example_batch(task, split)
    ctx = ExportContext(
        model=model,
        tokenizer=for_model_dir(
            kind.client_processor(target.model_dir, prepared), target.recipe.data.max_length
        ),
        recipe=target.recipe,
        spec=spec,
        example=example,
        outputs=output_names(model, example),
        task=task,
        prepared=prepared,
    )
    tolerances = P.limits(exporter.gate, spec)
    keys = {"max_metric_drop": "export.max_metric_drop", **TOLERANCE_KEYS[exporter.gate]}
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        started = time.time()
        artefact = exporter.write(ctx, tmp)
        export_seconds = round(time.time() - started, 2)
        run_exported = exporter.load(tmp, artefact, target.recipe)
        parity = P.compare(model, run_exported, task, split, batch_size)
        problems = P.failures(parity, tolerances, keys)
        parity["passed"] = not problems
        timing = P.latency(model, run_exported, task, split, spec.latency_runs)
        del run_exported  # release the artefact (file handles) before the dir moves
        sizes = {
            "export_bytes": _dir_bytes(tmp),
            "torch_bytes": _dir_bytes(target.model_dir, only=("model.safetensors",)),
        }
        result = {
            "run_dir": str(target.run.path) if target.run else None,
            "format": fmt,
            "artefact": artefact,
            "parity": parity,
            "tolerances": tolerances,
            "latency": timing,
            "sizes": sizes,
            "write_seconds": export_seconds,
        }
        if problems:
            error = GateError(
                f"{fmt} export failed its parity gate on {parity['samples']} {split.name}"
                f" examples: {'; '.join(problems)}; nothing written"
            )
            error.payload = result
            raise error
        write_manifest(
            tmp,
            format=fmt,
            source=str(target.model_dir.resolve()),
            run_dir=str(target.run.path.resolve()) if target.run else None,
            labels=prepared.label_names,
            recipe=target.recipe.resolved(),
            artefact=artefact,
            parity=parity,
            tolerances=tolerances,
            latency=timing,
            sizes=sizes,
            versions=_versions(fmt),
        )
        fsync_tree(tmp)  # on disk before the rename makes it visible
        signal_at("export")
        _publish(tmp, out_dir)
    except Exception as exc:  # a full disk (safetensors/onnx wrap it), a read-only dir
        failed = output_failure(exc, out_dir, writing=True)
        if failed is None:
            raise
        raise failed from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "exported %s to %s (%.1f MB); parity on %d examples: max |diff| %.2e, %s %s",
        fmt,
        out_dir,
        sizes["export_bytes"] / 1e6,
        parity["samples"],
        parity["max_abs_diff"],
        parity["metric"],
        _pair(parity["metric_torch"], parity["metric_export"]),
    )
    return result | {
        "outputs": {"dir": str(out_dir), "manifest": str(out_dir / "manifest.json")},
        "bytes": sizes["export_bytes"],
    }


def _pair(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a:.4f} (torch) / {b:.4f} (export)"


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished export into place; an export it replaces (--overwrite) is moved
    aside first and removed only after, so a kill never leaves neither."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    old = out_dir.with_name(f".old-{out_dir.name}-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _dir_bytes(root: Path, only: tuple[str, ...] | None = None) -> int:
    return sum(
        p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and (only is None or p.name in only)
    )


def _versions(fmt: str) -> dict[str, str]:
    """Library versions that made (and can run) the artefact."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "transformers"]
    if fmt in ("onnx", "int8"):
        names += ["onnx", "onnxruntime", "onnxscript"]
    out = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def summary_lines(p: dict[str, Any]) -> list[str]:
    """The human summary of an export result (parity, latency, sizes)."""
    par, lat, art = p["parity"], p.get("latency"), p.get("artefact") or {}
    lines = [
        f"parity on {par['samples']} {par['split']} examples: max |diff| {par['max_abs_diff']:.2e},"
        f" mean {par['mean_abs_diff']:.2e}, agreement {par['prediction_agreement']:.4f},"
        f" {par['metric']} {_pair(par['metric_torch'], par['metric_export'])}"
    ]
    if lat:
        lines.append(
            f"latency (1 example, median of {lat['runs']}): torch {lat['torch_ms']:.2f} ms,"
            f" export {lat['export_ms']:.2f} ms"
        )
    if "int8_bytes" in art:
        lines.append(
            f"size: fp32 ONNX {art['fp32_bytes'] / 1e6:.2f} MB ->"
            f" int8 {art['int8_bytes'] / 1e6:.2f} MB ({art['size_ratio']}x smaller)"
        )
    if "pruning" in art:
        pr = art["pruning"]
        rec = f"{pr['recovery']['steps']} steps" if pr["recovery"] else "none"
        lines.append(
            f"sparsity: {pr['sparsity_pruned_layers']:.1%} of {pr['layers_pruned']} linear layers"
            f" ({pr['sparsity_model']:.1%} of all parameters, {pr['scope']});"
            f" recovery: {rec}"
        )
    return lines
