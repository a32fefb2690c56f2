"""`make bench`: ftc's engine against the transformers Trainer and a bare loop, same work.

Four arms train the same model from the same seed on the same prepared data (ftc's cache,
built by a warm-up run) for the same steps, batch size, optimizer and schedule, then score
the validation split:
  ftc      `ftc train` (with the workload's train.batching)
  stock    the Trainer as scripts/bench_trainer.py sets it up (random sampler, padding
           collator)
  best     the Trainer with train_sampling_strategy="group_by_length" and fused AdamW
  bare     a plain PyTorch loop over ftc's batches (what the engine adds on top)
Arms run interleaved (ftc stock best bare, repeated) so drift hits all alike. Reported per
arm: samples/s and real (non-padding) tokens/s over training time, padding share, peak RSS
of the process, validation accuracy: medians and min-max, plus the medians of the paired
ratios of ftc's samples/s to each other arm. Markdown to stdout (and --md-out), JSON with
--json-out.

    python scripts/bench.py kjv --repeats 5 --steps 300     # the headline workload
    python scripts/bench.py demo --repeats 3 --steps 150
`kjv`: BERT (mini, from scratch) classifying KJV verses by testament, max_length 128,
length-grouped batches (recipes/bert-kjv-testament.yaml without the pretraining run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("ftc", "stock", "best", "bare")
WORKLOADS = {
    "kjv": (
        "bert-kjv-testament",
        ["model.init_from=null", "data.max_length=128", "train.batching=length_grouped"],
    ),
}
# Runs ftc as `python -m fine_tune_cli` and reports the process's peak RSS on exit.
RSS_WRAPPER = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: print('FTC_BENCH_RSS_KB', resource.getrusage("
    "resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
    "sys.argv = ['ftc', *sys.argv[1:]]\n"
    "runpy.run_module('fine_tune_cli', run_name='__main__')\n"
)
FIGURES = ("samples_per_s", "tokens_per_s", "padding", "peak_rss_mb", "validation_accuracy")


def run(cmd: list[str], env: dict[str, str]) -> tuple[dict, str]:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def ftc_padding(recipe: str, overrides: list[str]) -> float:
    """Padding share of the batches ftc trains on: its order is a pure function of
    (seed, epoch), so it is recomputed here exactly rather than logged."""
    from fine_tune_cli.data.batching import step_groups, train_order
    from fine_tune_cli.data.prepare import prepare_dataset
    from fine_tune_cli.recipe import load_recipe
    from fine_tune_cli.tasks import task_for

    spec_recipe = load_recipe(recipe, overrides).recipe
    spec = spec_recipe.train
    train = prepare_dataset(spec_recipe)[0].splits["train"]
    pads = task_for(spec_recipe.model).pads_batches
    real = cells = step = epoch = 0
    while step < (spec.max_steps or 0):
        order = train_order(train, pads, spec.batching, spec.seed, epoch, spec.batch_size)
        for group in step_groups(order, spec.batch_size, spec.grad_accum):
            for idx in group:
                lengths = train.lengths[idx]
                real += int(lengths.sum())
                cells += int(lengths.max()) * len(idx)
            step += 1
            if step >= spec.max_steps:
                break
        epoch += 1
    return 1 - real / max(1, cells)


def ftc_figures(payload: dict, stderr: str, run_dir: Path, padding: float) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "step_time" in r]
    seconds = sum(r["step_time"] for r in steps)
    rss = next(x.split()[1] for x in stderr.splitlines() if x.startswith("FTC_BENCH_RSS_KB"))
    return {
        "train_seconds": round(seconds, 2),
        "samples_per_s": sum(r["samples_per_s"] * r["step_time"] for r in steps) / seconds,
        "tokens_per_s": sum(r["tokens_per_s"] * r["step_time"] for r in steps) / seconds,
        "padding": round(padding, 4),
        "peak_rss_mb": round(int(rss) / 1024, 1),
        "validation_accuracy": payload["metrics"]["accuracy"],
    }


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def markdown(result: dict) -> str:
    head = (
        f"{result['recipe']} {' '.join(result['overrides'])}; {result['repeats']} interleaved"
        f" repeats, medians (min-max); {result['threads']} threads"
    )
    rows = [
        head,
        "",
        "| arm | samples/s | real tokens/s | padding | peak RSS MB | validation accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        s = result["summary"][arm]
        cells = [
            f"{s[k]['median']:{fmt}} ({s[k]['min']:{fmt}}-{s[k]['max']:{fmt}})"
            for k, fmt in zip(FIGURES, (".1f", ".0f", ".3f", ".0f", ".4f"), strict=True)
        ]
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    rows.append("")
    rows.append("| ftc samples/s over | median of paired ratios (min-max) |")
    rows.append("|---|---|")
    for arm in ARMS[1:]:
        r = result["ratios"][arm]
        rows.append(f"| {arm} | {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) |")
    return "\n".join(rows)


def write_table(path: Path, table: str, workload: str) -> None:
    """Put the table between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in `path`
    (the prose around it stays), or write the file with just the table."""
    start, end = f"<!-- bench:{workload} -->", f"<!-- /bench:{workload} -->"
    old = path.read_text() if path.is_file() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        path.write_text(f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}")
    else:
        path.write_text(f"{start}\n{table}\n{end}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="kjv", help="a recipe, or the kjv workload")
    parser.add_argument("overrides", nargs="*", default=[])
    parser.add_argument("--repeats", "--runs", type=int, default=3, dest="repeats")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset")
    parser.add_argument("--md-out", type=Path)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_intermixed_args()
    arms = [a for a in args.arms.split(",") if a]
    if "ftc" not in arms or any(a not in ARMS for a in arms):
        sys.exit(f"error: --arms: ftc plus any of {', '.join(ARMS[1:])}")
    recipe, preset = WORKLOADS.get(args.recipe, (args.recipe, []))
    # one validation pass at the end on every arm
    overrides = [*preset, *args.overrides, f"train.max_steps={args.steps}"]
    overrides += [f"train.eval_every={args.steps}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    rows: dict[str, list] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="ftc-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        ftc = [sys.executable, "-c", RSS_WRAPPER, "train", recipe, *overrides]
        ftc += ["log.every=1", f"train.run_dir={run_dir}", "--overwrite", "--json"]
        run(ftc, env)  # warm-up: prepares the data cache every arm reads
        padding = ftc_padding(recipe, overrides)
        for _ in range(args.repeats):
            for arm in arms:
                if arm == "ftc":
                    payload, err = run(ftc, env)
                    rows[arm].append(ftc_figures(payload, err, run_dir, padding))
                else:
                    base = [sys.executable, str(HERE / "bench_trainer.py"), "--arm", arm]
                    rows[arm].append(run([*base, recipe, *overrides], env)[0])
    result = {
        "recipe": recipe,
        "overrides": overrides,
        "repeats": args.repeats,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": rows,
        "summary": {
            arm: {k: spread([r[k] for r in runs]) for k in FIGURES} for arm, runs in rows.items()
        },
        "ratios": {
            arm: spread(
                [
                    a["samples_per_s"] / b["samples_per_s"]
                    for a, b in zip(rows["ftc"], rows[arm], strict=True)
                ]
            )
            for arm in arms
            if arm != "ftc"
        },
    }
    text = markdown(result) if arms == list(ARMS) else json.dumps(result["summary"], indent=1)
    print(text)
    if args.md_out:
        write_table(args.md_out, text, args.recipe)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
