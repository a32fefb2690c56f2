"""`ftc explain MODEL_DIR|RUN_DIR INPUT|-`: attribute each input's prediction (or
`--target LABEL`) to its words or image patches; write explanations.jsonl and a
self-contained explanations.html into --out. Also eval's hook for `eval.explain: N`."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from fine_tune_cli.data.sources import STDIN
from fine_tune_cli.errors import DataError, OutputError, RecipeError

log = logging.getLogger("ftc")

METHODS = ("ig", "rollout")
BASELINES = ("pad", "zeros")
MAX_RELATIVE_DELTA = 0.05  # IG completeness: |delta| within 5% of the explained change
REFINE = 16  # IG steps may grow to 16x --steps (4x at a time) to meet it
NOISE = 1e-4  # |delta| in probability below which IG counts as converged anyway
# p(input) - p(baseline) below this: the model gives the baseline (no content) about the
# probability it gives the input, so IG's scores have next to nothing to explain.
SMALL_CHANGE = 0.05
JSONL = "explanations.jsonl"
HTML = "explanations.html"


def run_explain(
    model_dir: str,
    source: str,
    *,
    target: str | None,
    method: str,
    baseline: str,
    steps: int,
    out: str,
) -> dict[str, Any]:
    from fine_tune_cli.targets import resolve_target

    if method not in METHODS:
        raise RecipeError(f"--method '{method}': choose one of {', '.join(METHODS)}")
    if baseline not in BASELINES:
        raise RecipeError(f"--baseline '{baseline}': choose one of {', '.join(BASELINES)}")
    if steps < 1:
        raise RecipeError(f"--steps {steps}: at least 1 interpolation step")
    _refuse_non_torch_export(Path(model_dir))
    found = resolve_target(model_dir)
    explainer = _explainer(found)
    if method == "ig":  # before the model loads: a missing extra is exit 2 at once
        from fine_tune_cli.optional import require

        require("captum.attr", "ftc explain --method ig")
    if source != STDIN and not Path(source).exists():
        raise DataError(f"{source}: input not found")
    model, labels = _load(found)
    wanted = _target_id(target, labels)
    examples = explainer.from_source(source)
    rows = [
        explain_example(model, explainer, ex, labels, wanted, method, baseline, steps)
        for ex in examples
    ]
    facts = _facts(found.model_dir, method, baseline, steps, target)
    outputs = write_outputs(Path(out), explainer, examples, rows, facts)
    deltas = [r["relative_delta"] for r in rows if r.get("relative_delta") is not None]
    log.info("explained %d inputs with %s (%s)", len(rows), found.model_dir, ", ".join(facts))
    _warn_unconverged(rows, steps)
    _warn_baseline_scores_alike(rows, baseline)
    return {
        "run_dir": str(found.run.path) if found.run else None,
        "model_dir": str(found.model_dir),
        "input": source,
        "method": method,
        "baseline": baseline if method == "ig" else None,
        "steps": steps if method == "ig" else None,
        "target": target,
        "outputs": outputs,
        "count": len(rows),
        "max_relative_delta": max(deltas) if deltas else None,
        "explanations": [_summary(r) for r in rows],
    }


def explain_example(
    model: Any,
    explainer: Any,
    example: Any,
    labels: list[str],
    wanted: int | None,
    method: str,
    baseline: str,
    steps: int,
) -> dict[str, Any]:
    """One jsonl row: the prediction, the explained class, the method's figures and the
    explainer's per-unit scores (tokens and words, or the patch grid)."""
    from fine_tune_cli.engine.runtime import to_device
    from fine_tune_cli.explain.attribution import attention_rollout

    device = next(model.parameters()).device
    inputs = to_device(example.inputs, device)
    if method == "ig":
        blank = to_device(example.blank, device) if baseline == "pad" else None
        att, steps = _converged_ig(model, inputs, blank, wanted, steps)
        scores = att.scores
    else:
        att = attention_rollout(model, inputs)
        scores = explainer.rollout_scores(example, att.scores)
    probs = att.probs
    best = int(np.argmax(probs))
    target = best if wanted is None else wanted
    row: dict[str, Any] = {
        "id": example.id,
        "label": labels[best],
        "prob": round(float(probs[best]), 6),
        "probs": {name: round(float(p), 6) for name, p in zip(labels, probs, strict=True)},
        "target": labels[target],
        "target_prob": round(float(probs[target]), 6),
        "method": method,
        **({"baseline": baseline, "steps": steps} if method == "ig" else {}),
        **att.summary(),
        **explainer.describe(example, scores),
    }
    row["target_prob_without_top"] = _prob_without_top(model, explainer, example, row, target)
    if example.view.get("filtered"):
        row["filtered"] = example.view["filtered"]
    return row


def _prob_without_top(
    model: Any, explainer: Any, example: Any, row: dict[str, Any], target: int
) -> float:
    """p(target) once the top words / patches are blanked as the baseline blanks them: a
    check of the explanation against the model (ERASER's comprehensiveness). Evidence that
    mattered leaves a drop; a model that decides without it leaves the figure where it was."""
    import torch

    from fine_tune_cli.engine.runtime import to_device

    inputs = to_device(explainer.without_top(example, row), next(model.parameters()).device)
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0].float(), dim=-1)
    return round(float(probs[target]), 6)


def _converged_ig(
    model: Any, inputs: dict[str, Any], blank: dict[str, Any] | None, wanted: int | None, steps: int
) -> tuple[Any, int]:
    """IG with `steps`, redone with 4x the steps (up to REFINE x `steps`) while its scores
    miss p(input) - p(baseline) by more than MAX_RELATIVE_DELTA: a path through sharp
    turns of the model (ViT's patches, saturated heads) needs finer sampling than most."""
    from fine_tune_cli.explain.attribution import integrated_gradients

    limit = steps * REFINE
    while True:
        att = integrated_gradients(model, inputs, blank, wanted, steps)
        off = att.summary().get("relative_delta")
        if off is None or _converged(att.delta, off) or steps * 4 > limit:
            return att, steps
        steps *= 4


def _converged(delta: float, relative: float) -> bool:
    """Within 5% of the explained change, or off by float32 noise alone (a change of ~0,
    where the relative figure means nothing)."""
    return relative <= MAX_RELATIVE_DELTA or abs(delta) <= NOISE


def explain_misclassified(
    target: Any, details: dict[str, Any], texts: list[str], out_dir: Path
) -> dict[str, str]:
    """eval's hook (`eval.explain: N`): IG explanations of the N most confidently
    misclassified examples of the evaluated split, written beside the report as
    explanations.jsonl/.html; each row adds the true label."""
    n = target.recipe.eval.explain
    probs, y = details.get("probs"), details.get("labels")
    if not n or probs is None or y is None:
        return {}
    from fine_tune_cli.optional import require

    require("captum.attr", "eval.explain")
    pred = probs.argmax(1)
    wrong = np.nonzero(pred != y)[0]
    wrong = [int(i) for i in wrong[np.argsort(-probs[wrong, pred[wrong]])][:n]]
    if not wrong:
        return {}
    explainer = _explainer(target)
    model, labels = _load(target)
    examples = explainer.from_eval(details, texts, wrong)
    rows = []
    for example in examples:
        row = explain_example(model, explainer, example, labels, None, "ig", "pad", IG_STEPS)
        rows.append({**row, "true": labels[int(y[example.id])]})
    facts = _facts(target.model_dir, "ig", "pad", IG_STEPS, None)
    written = write_outputs(out_dir, explainer, examples, rows, facts, title="misclassified")
    return {"explanations_jsonl": written["jsonl"], "explanations_html": written["html"]}


IG_STEPS = 50  # eval.explain's step count: the CLI's default (captum's too)


# --------------------------------------------------------------------------- helpers
def _refuse_non_torch_export(path: Path) -> None:
    """IG needs gradients, rollout attention weights: onnx/pt2/int8/pruned exports have
    neither as torch modules. Say which inputs work."""
    from fine_tune_cli.manifest import MANIFEST, read_manifest

    if not (path / MANIFEST).is_file():
        return
    fmt = "hf"
    with contextlib.suppress(Exception):  # unreadable: resolve_target reports it
        fmt = read_manifest(path).get("format", "hf")
    if fmt != "hf":
        raise RecipeError(
            f"{path}: a {fmt} export; ftc explain needs the torch weights: give the run"
            " dir, its best/, a checkpoint or the hf export"
        )


def _explainer(found: Any) -> Any:
    from fine_tune_cli.tasks import task_for

    return task_for(found.recipe.model).explainer(found)


def _load(found: Any) -> tuple[Any, list[str]]:
    """The model on the recipe's device, in eval mode, and its label names."""
    from fine_tune_cli.engine.runtime import pick_device
    from fine_tune_cli.targets import load_model

    model = load_model(found).to(pick_device(found.recipe.train.device))
    model.eval()
    id2label = model.config.id2label or {}
    return model, [id2label[i] for i in range(len(id2label))]


def _target_id(target: str | None, labels: list[str]) -> int | None:
    if target is None:
        return None
    if target not in labels:
        raise RecipeError(
            f"--target '{target}': not a label of this model (labels: {', '.join(labels)})"
        )
    return labels.index(target)


def _facts(
    model_dir: Path, method: str, baseline: str, steps: int, target: str | None
) -> list[str]:
    facts = [f"model {model_dir}"]
    if method == "ig":
        facts.append(
            f"Integrated Gradients over the input embeddings, {baseline} baseline, {steps}"
            " steps; scores sum to p(input) - p(baseline) of the explained class"
        )
    else:
        facts.append(
            "attention rollout (class-agnostic: the share of attention flowing from each"
            " position to the one the classifier reads)"
        )
    facts.append(f"explaining {target}" if target else "explaining the predicted class")
    return facts


def _warn_unconverged(rows: list[dict[str, Any]], steps: int) -> None:
    """IG's scores should add up to p(input) - p(baseline); past 5% off, the path was
    sampled too coarsely for this model (saturated regions, sharp turns)."""
    off = [
        r
        for r in rows
        if r.get("relative_delta") is not None
        and not _converged(r["convergence_delta"], r["relative_delta"])
    ]
    if off:
        worst = max(off, key=lambda r: r["relative_delta"])
        log.warning(
            "IG scores of %d input(s) miss p(input) - p(baseline) by more than %d%% even"
            " with %d steps (worst: %s, %.0f%%); rerun with more --steps",
            len(off),
            round(100 * MAX_RELATIVE_DELTA),
            steps * REFINE,
            worst["id"],
            100 * worst["relative_delta"],
        )


def _warn_baseline_scores_alike(rows: list[dict[str, Any]], baseline: str) -> None:
    """IG splits p(input) - p(baseline) among the words or patches. A model that gives
    the content-free baseline the same class at the same probability decides by default
    (a detector of the other class), and the scores are then the noise of a ~0 change:
    say so instead of letting a reader trust the top words."""
    alike: dict[str, list[float]] = {}
    for r in rows:  # the predicted class only: a --target the model rejects is ~0 on both
        if r.get("f_baseline") is None or r["target"] != r["label"]:
            continue
        if r["f_input"] - r["f_baseline"] < SMALL_CHANGE:
            alike.setdefault(r["target"], []).append(r["f_baseline"])
    for target, at_baseline in alike.items():
        log.warning(
            "IG: for %d of %d input(s) the %s baseline (no content) gets p(%s) %.3f"
            " (median), as much as the input or more (p(input) - p(baseline) < %.2f): the"
            " model gives that class without the input's content, so the scores explain"
            " next to nothing; check the model (does it need evidence for '%s'?) before"
            " trusting the top words or patches",
            len(at_baseline),
            len(rows),
            baseline,
            target,
            float(np.median(at_baseline)),
            SMALL_CHANGE,
            target,
        )


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """The --json entry of one input: the jsonl row without per-token/per-patch detail."""
    keep = ("id", "label", "prob", "target", "target_prob", "target_prob_without_top", "top")
    keep += ("filtered", "true", "steps")
    keep += ("f_input", "f_baseline", "convergence_delta", "relative_delta", "truncated")
    return {k: row[k] for k in keep if k in row}


def write_outputs(
    out: Path,
    explainer: Any,
    examples: list[Any],
    rows: list[dict[str, Any]],
    facts: list[str],
    title: str = "explanations",
) -> dict[str, str]:
    """explanations.jsonl and explanations.html in `out`, each written to a temp file
    and renamed: a failed run leaves the previous files, never half of one."""
    from fine_tune_cli.explain.page import render_page
    from fine_tune_cli.predict import write_jsonl

    page = render_page(
        f"ftc explain: {title}",
        facts,
        [explainer.body(ex, row) for ex, row in zip(examples, rows, strict=True)],
    )
    write_jsonl(out / JSONL, rows)
    html_path = out / HTML
    tmp = html_path.with_name(f".{HTML}.tmp-{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, html_path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"{html_path}: cannot write the page ({exc.strerror})") from None
    return {"jsonl": str(out / JSONL), "html": str(html_path)}
