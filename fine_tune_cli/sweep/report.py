"""What a sweep leaves behind: the leaderboard (rows, leaderboard.md), the best trial's
resolved recipe as a recipe file, and report.html with the metric-vs-trial and
parameter-importance plots (also as PNGs). Every file is written to a temp name and
renamed, so a reader never sees half of one."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fine_tune_cli.errors import OutputError
from fine_tune_cli.optional import require
from fine_tune_cli.runs import RECIPE_LOCK, read_recipe_lock

if TYPE_CHECKING:
    import optuna

    from fine_tune_cli.sweep.study import SweepPlan

LEADERBOARD = "leaderboard.md"
BEST_RECIPE = "best-recipe.yaml"
REPORT = "report.html"
METRIC_PLOT = "metric_vs_trial.png"
IMPORTANCE_PLOT = "importances.png"
MIN_TRIALS_FOR_IMPORTANCE = 3


def write_text_atomic(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror})") from None


def leaderboard(study: optuna.Study, direction: str) -> list[dict[str, Any]]:
    """One row per trial: complete ones best first, then pruned (by their last value),
    then failed, killed and running ones."""
    TrialState = require("optuna.trial", "ftc sweep").TrialState

    from fine_tune_cli.sweep.study import superseded

    rerun = superseded(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower().replace("fail", "failed")
        value = t.value
        if t.state == TrialState.PRUNED and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        note = ""
        if t.number in rerun and "exit_code" not in t.user_attrs:
            state, note = "killed", f"killed with the sweep; rerun as trial {rerun[t.number]}"
        elif t.number in rerun:
            note = f"{t.user_attrs.get('error', '')}; queued again as trial {rerun[t.number]}"
        elif t.state == TrialState.PRUNED:
            at = t.user_attrs.get("pruned_at_eval", max(t.intermediate_values or [0]))
            note = f"pruned at eval {at}"
        elif t.user_attrs.get("error"):
            note = str(t.user_attrs["error"])
        if t.user_attrs.get("recipe_values"):
            note = "; ".join(filter(None, ["the recipe's own values", note]))
        rows.append(
            {
                "trial": t.number,
                "state": state,
                "value": value,
                "evals": t.user_attrs.get("evals", len(t.intermediate_values)),
                "params": dict(t.params),
                "seconds": t.user_attrs.get("seconds"),
                "exit_code": t.user_attrs.get("exit_code"),
                "run_dir": t.user_attrs.get("run_dir"),
                "note": note,
            }
        )
    order = {"complete": 0, "pruned": 1}
    sign = -1 if direction == "maximize" else 1

    def key(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row["value"]
        scored = isinstance(value, int | float) and row["state"] in order
        return (order.get(row["state"], 2), sign * value if scored else 0.0, row["trial"])

    return sorted(rows, key=key)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"
    return "" if value is None else str(value)


def table_lines(rows: list[dict[str, Any]], metric: str, keys: list[str]) -> list[str]:
    """A Markdown table (it reads as plain text in a terminal too)."""
    head = ["trial", "state", metric, "evals", *keys, "seconds", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            str(r["trial"]),
            r["state"],
            _shown(r["value"]),
            str(r["evals"]),
            *(_shown(r["params"].get(k, "(recipe)")) for k in keys),
            "" if r["seconds"] is None else f"{r['seconds']:.0f}",
            r["note"].replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(study: optuna.Study, plan: SweepPlan) -> dict[str, Any]:
    """Best trial, the recipe's own values (trial 0 or its rerun), and counts."""
    TrialState = require("optuna.trial", "ftc sweep").TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = {
        state: sum(1 for r in leaderboard(study, plan.spec.direction) if r["state"] == state)
        for state in ("complete", "pruned", "failed", "killed", "running")
    }
    out: dict[str, Any] = {
        "counts": counts,
        "best": None,
        "baseline": None,
        "improvement": None,
        "runner_up": None,
    }
    if not complete:
        return out
    best = study.best_trial
    out["best"] = _trial_summary(best)
    base = next((t for t in complete if t.user_attrs.get("recipe_values")), None)
    if base is None:
        return out
    out["baseline"] = _trial_summary(base)
    assert best.value is not None and base.value is not None
    out["improvement"] = best.value - base.value  # 0 when the recipe's values won
    others = [t for t in complete if t.number != base.number]
    if best.number == base.number and others:
        maximize = plan.spec.direction == "maximize"
        pick = max if maximize else min
        out["runner_up"] = _trial_summary(pick(others, key=lambda t: t.value or 0.0))
    return out


def _trial_summary(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "trial": t.number,
        "value": t.value,
        "params": dict(t.params),
        "run_dir": t.user_attrs.get("run_dir"),
    }


def write_best_recipe(plan: SweepPlan, best: dict[str, Any]) -> Path | None:
    """The best trial's resolved recipe as a recipe file of its own: named <name>-best
    (its own default run dir), run_dir cleared, validated before it is written."""
    from fine_tune_cli.recipe import dump_recipe, validate_tree

    run_dir = Path(best["run_dir"])
    recipe = read_recipe_lock(run_dir / RECIPE_LOCK)
    tree = recipe.resolved()
    tree["name"] = f"{recipe.name}-best"
    tree["train"]["run_dir"] = None
    tree["description"] = (
        f"Best of sweep {plan.out}: trial {best['trial']}, {plan.spec.metric}={best['value']:.4f}"
    )
    checked = validate_tree(tree, default_origin=str(run_dir / RECIPE_LOCK))
    params = ", ".join(f"{k}={_shown(v)}" for k, v in best["params"].items())
    header = (
        f"# Best trial ({best['trial']}) of `ftc sweep` in {plan.out}: {plan.spec.metric}"
        f" {best['value']:.4f} ({plan.spec.direction}).\n# Parameters: {params}\n"
        f"# Resolved recipe of {run_dir}; train it: ftc train {plan.out / BEST_RECIPE}\n"
    )
    path = plan.out / BEST_RECIPE
    write_text_atomic(path, header + dump_recipe(checked))
    return path


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """Parameter importances (Optuna's default evaluator), or why there are none."""
    import warnings

    optuna = require("optuna", "ftc sweep")
    TrialState = require("optuna.trial", "ftc sweep").TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, (
            f"too few complete trials ({len(complete)}) for parameter importances"
            f" (needs {MIN_TRIALS_FOR_IMPORTANCE})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:
        return {}, f"no parameter importances: {exc}"
    if not found:
        return {}, "no parameter importances: no parameter varied across complete trials"
    return {k: float(v) for k, v in found.items()}, None


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(
    rows: list[dict[str, Any]], metric: str, maximize: bool, found: dict[str, float]
) -> dict[str, bytes]:
    """Metric per trial (complete and pruned, with the running best) and importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for state, marker, color in (("complete", "o", "tab:blue"), ("pruned", "x", "tab:red")):
        pts = sorted(
            (r["trial"], r["value"]) for r in rows if r["state"] == state and r["value"] is not None
        )
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, color=color, label=state)
    done = sorted((r["trial"], r["value"]) for r in rows if r["state"] == "complete")
    if done:  # the best complete value so far, as a step line
        pick = max if maximize else min
        best = [pick(v for _, v in done[: i + 1]) for i in range(len(done))]
        xs = [n for n, _ in done]
        last = max(r["trial"] for r in rows)
        if last > xs[-1]:  # carry the line on to the last trial
            xs, best = [*xs, last], [*best, best[-1]]
        ax.step(xs, best, where="post", color="tab:gray", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{metric} per trial (pruned: last reported value)")
    if ax.has_data():
        ax.legend(loc="best")
    out[METRIC_PLOT] = _png(fig)
    plt.close(fig)
    if found:
        fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.45 * len(found)))
        names = list(found)[::-1]
        ax.barh(names, [found[n] for n in names], color="tab:green")
        ax.set_xlabel("importance (share of the metric's variation)")
        ax.set_title("parameter importances")
        out[IMPORTANCE_PLOT] = _png(fig)
        plt.close(fig)
    return out


def write_report(
    plan: SweepPlan, rows: list[dict[str, Any]], result: dict[str, Any]
) -> dict[str, str]:
    """leaderboard.md, best-recipe.yaml, the PNGs and a self-contained report.html."""
    spec = plan.spec
    keys = list(spec.space)
    outputs: dict[str, str] = {}
    lines = table_lines(rows, spec.metric, keys)
    best = result["best"]
    verdict = verdict_line(spec.metric, result)
    md = [f"# Sweep of {plan.loaded.recipe.name}: {spec.metric} ({spec.direction})", "", verdict]
    write_text_atomic(plan.out / LEADERBOARD, "\n".join([*md, "", *lines]) + "\n")
    outputs["leaderboard"] = str(plan.out / LEADERBOARD)
    if best is not None:
        path = write_best_recipe(plan, best)
        outputs["best_recipe"] = str(path)
    found, why_not = result["importances"], result["importances_note"]
    images = plots(rows, spec.metric, spec.direction == "maximize", found)
    for name, data in images.items():
        write_text_atomic(plan.out / name, data)
        outputs[name.removesuffix(".png")] = str(plan.out / name)
    page = _html(plan, lines, verdict, images, found, why_not)
    write_text_atomic(plan.out / REPORT, page)
    outputs["report"] = str(plan.out / REPORT)
    return outputs


def verdict_line(metric: str, result: dict[str, Any]) -> str:
    """Best trial against the recipe's own values, with the difference either way."""
    best, base, other = result["best"], result["baseline"], result["runner_up"]
    if best is None:
        return "No trial completed."
    text = f"Best: trial {best['trial']}, {metric} {best['value']:.4f}."
    if base is None:
        return text + " The recipe's own values (trial 0) did not complete."
    if best["trial"] != base["trial"]:
        return (
            f"{text} The recipe's own values (trial {base['trial']}): {metric}"
            f" {base['value']:.4f}; the best trial is better by {abs(result['improvement']):.4f}."
        )
    if other is None:
        return text + " Only the recipe's own values completed."
    return (
        f"{text} No trial beat the recipe's own values (trial {base['trial']}); the best"
        f" other, trial {other['trial']} ({other['value']:.4f}), is worse by"
        f" {abs(base['value'] - other['value']):.4f}."
    )


def _html(
    plan: SweepPlan,
    lines: list[str],
    verdict: str,
    images: dict[str, bytes],
    found: dict[str, float],
    why_not: str | None,
) -> str:
    """One file, images inlined: it opens the same from a CI artefact or an email."""
    cells = [line.strip("|").split(" | ") for line in lines if not line.startswith("|---")]
    head, body = cells[0], cells[1:]
    table = "<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"
    for row in body:
        table += "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>"
    table += "</table>"
    figs = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"></figure>'
        for name, data in images.items()
    )
    imp = (
        "<ul>" + "".join(f"<li>{html.escape(k)}: {v:.3f}</li>" for k, v in found.items()) + "</ul>"
        if found
        else f"<p>{html.escape(why_not or '')}</p>"
    )
    title = f"Sweep of {plan.loaded.recipe.name}: {plan.spec.metric} ({plan.spec.direction})"
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(verdict)}</p><p>Study: {html.escape(str(plan.out / 'study.db'))}"
        f" (optuna-dashboard sqlite:///{html.escape(str((plan.out / 'study.db').resolve()))})</p>"
        f"<h2>Leaderboard</h2>{table}<h2>Plots</h2>{figs}<h2>Parameter importances</h2>{imp}"
        "</body></html>\n"
    )
