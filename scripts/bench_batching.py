"""Choose `train.batching` by measurement: random vs length_grouped over several seeds.

For each workload, seed and batching (interleaved: seed 1 random, seed 1 grouped, seed 2
random, ...) it trains `ftc train RECIPE ... train.seed=S train.batching=B` and records the
validation accuracy and f1_macro of the best model, the median samples/s of the logged
steps (step 1, which carries the warm-up, excluded) and the padding share of the first
epoch's batches. It also reports the class mix of those batches: the mean share of a
batch taken by its most common label, against the same figure for random batches — a
grouping that sorts one class together (as `group_by_length` did on a 1-epoch spam run:
0.56 accuracy instead of 0.98) shows up here before it shows up in accuracy.

    python scripts/bench_batching.py --seeds 1 2 3            # demo and kjv
    python scripts/bench_batching.py demo --seeds 1 2 3 --json-out /tmp/batching.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BATCHINGS = ("random", "length_grouped")
WORKLOADS = {
    "demo": ("demo", []),
    "kjv": (
        "bert-kjv-testament",
        ["model.init_from=null", "data.max_length=128", "train.max_steps=300"],
    ),
}


def train(recipe: str, overrides: list[str], run_dir: Path, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "fine_tune_cli", "train", recipe, *overrides]
    cmd += [f"train.run_dir={run_dir}", "--overwrite", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def batch_figures(run_dir: Path, batching: str) -> dict[str, float]:
    """Padding share and class mix of the first epoch's batches, as the run batched them."""
    from fine_tune_cli.data.batching import train_order
    from fine_tune_cli.data.store import open_prepared
    from fine_tune_cli.runs import read_recipe_lock

    recipe = read_recipe_lock(run_dir / "recipe.lock.yaml")
    provenance = json.loads((run_dir / "provenance.json").read_text())
    split = open_prepared(Path(provenance["data"]["path"])).splits["train"]
    spec = recipe.train
    order = train_order(split, True, batching, spec.seed, 0, spec.batch_size)
    batches = [order[i : i + spec.batch_size] for i in range(0, len(order), spec.batch_size)]
    lengths = split.lengths
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    majority = []
    if split.labels is not None:
        for b in batches:
            counts = np.bincount(split.labels[b])
            majority.append(counts.max() / len(b))
    return {
        "padding": 1 - real / padded,
        "batch_majority_share": float(np.mean(majority)) if majority else float("nan"),
    }


def samples_per_s(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r and r["step"] > 1]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ftc-batching-") as tmp:
        for name in args.workloads:
            recipe, overrides = WORKLOADS[name]
            for seed in args.seeds:
                for batching in BATCHINGS:
                    run_dir = Path(tmp) / f"{name}-{seed}-{batching}"
                    extra = [f"train.seed={seed}", f"train.batching={batching}"]
                    out = train(recipe, overrides + extra, run_dir, env)
                    best = out["metrics"]
                    row = {
                        "workload": name,
                        "seed": seed,
                        "batching": batching,
                        "samples_per_s": samples_per_s(run_dir),
                        **batch_figures(run_dir, batching),
                        # the last validation eval: accuracy / f1_macro of the run's end
                        "validation_accuracy": best.get("accuracy"),
                        "validation_f1_macro": best.get("f1_macro"),
                    }
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(results))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1) + "\n")


def table(results: list[dict]) -> str:
    keys = ("samples_per_s", "padding", "batch_majority_share", "validation_accuracy")
    keys += ("validation_f1_macro",)
    lines = ["| workload | batching | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name in dict.fromkeys(r["workload"] for r in results):
        for batching in BATCHINGS:
            rows = [r for r in results if r["workload"] == name and r["batching"] == batching]
            cells = []
            for k in keys:
                values = [r[k] for r in rows]
                cells.append(
                    f"{statistics.median(values):.4g} ({min(values):.4g}-{max(values):.4g})"
                )
            lines.append(f"| {name} | {batching} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
