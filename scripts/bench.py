"""`make bench`: ftc's engine against the stock transformers Trainer on the same recipe.

Both sides train the same model from the same seed on the same prepared data (ftc's
cache, built by a warm-up run) for the same steps with the same optimizer and schedule,
then score the validation split. Runs alternate A B A B ... so drift hits both alike;
medians of whole-process wall time and the median of per-pair ratios are printed as a
Markdown table (and JSON with --json).

    python scripts/bench.py demo --runs 3 train.max_steps=150
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


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def ftc_figures(payload: dict, run_dir: Path) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["samples_per_s"] for r in lines if "samples_per_s" in r and "split" not in r]
    return {
        "samples_per_s": statistics.median(speeds),
        "validation_accuracy": payload["metrics"]["accuracy"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="demo")
    parser.add_argument("overrides", nargs="*", default=[])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_intermixed_args()
    overrides = args.overrides or ["train.max_steps=150"]
    steps = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.max_steps=")), None)
    if steps:  # one validation pass at the end, as the baseline does
        overrides = [*overrides, f"train.eval_every={steps}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ftc = [sys.executable, "-m", "fine_tune_cli", "train", args.recipe, *overrides]
    base = [sys.executable, str(HERE / "bench_trainer.py"), args.recipe, *overrides]
    rows: dict[str, list] = {"ftc": [], "trainer": []}
    with tempfile.TemporaryDirectory(prefix="ftc-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        a_cmd = [*ftc, f"train.run_dir={run_dir}", "--overwrite", "--json"]
        timed(a_cmd, env)  # warm-up: prepares the data cache both sides read
        for _ in range(args.runs):
            wall, payload = timed(a_cmd, env)
            rows["ftc"].append({"wall_s": wall, **ftc_figures(payload, run_dir)})
            wall, payload = timed(base, env)
            rows["trainer"].append({"wall_s": wall, **payload})
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(rows["ftc"], rows["trainer"], strict=True)]
    summary = {
        side: {
            key: statistics.median(r[key] for r in runs)
            for key in ("wall_s", "samples_per_s", "validation_accuracy")
        }
        for side, runs in rows.items()
    }
    summary["wall_ratio_ftc_over_trainer"] = statistics.median(ratios)
    if args.json:
        print(json.dumps({"recipe": args.recipe, "overrides": overrides, "runs": rows, **summary}))
        return 0
    print(f"{args.recipe} {' '.join(overrides)}; medians of {args.runs} runs each (A/B alternated)")
    print("| | wall s (whole process) | train samples/s | validation accuracy |")
    print("|---|---|---|---|")
    for side in ("ftc", "trainer"):
        s = summary[side]
        print(
            f"| {side} | {s['wall_s']:.1f} | {s['samples_per_s']:.0f} |"
            f" {s['validation_accuracy']:.4f} |"
        )
    print(f"wall ratio ftc/trainer (median of pairs): {summary['wall_ratio_ftc_over_trainer']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
