"""make bench-prepare: peak RSS and speed of `ftc prepare` as the corpus grows, and its
tokens/s next to `datasets.Dataset.map(batched=True)` with the same fast tokenizer.

Corpora are generated from the KJV (../shared/data) so nothing is a duplicate:
- text: kjv.txt repeated, every non-empty line ending in " <copy number>" (gpt2-clm-kjv:
  chapters as documents, packed 128-token blocks);
- jsonl: one record per chapter and copy, every verse ending in " <copy number>", label =
  testament (a BERT classifier recipe with `dedupe`).
Both use the real GPT-2 tokenizer (../shared/data/gpt2-tokenizer), so tokenisation is
the same work in every arm. Each prepare is its own process; its peak RSS is what the
kernel reports for it (wait4), its tokens/s the whole prepare's (read, steps, split,
tokenise, pack, write) from the manifest. The datasets arm tokenises the same documents
(read by ftc's reader beforehand, not timed) with map(batched=True) at num_proc 1 and 2.

    python scripts/bench_prepare.py --sizes-mb 100 1000 --out docs/bench-prepare.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FTC_SHARED_DATA", REPO.parent / "shared" / "data"))
TOKENIZER = SHARED / "gpt2-tokenizer"


def make_text(path: Path, size_mb: float) -> Path:
    """kjv.txt repeated until `size_mb`, every non-empty line suffixed with its copy."""
    lines = (SHARED / "kjv.txt").read_text().splitlines()
    target, written, copy = size_mb * 1e6, 0, 0
    with open(path, "w") as fh:
        while written < target:
            block = "\n".join(f"{line} {copy}" if line.strip() else line for line in lines)
            fh.write(block + "\n\n")
            written += len(block) + 2
            copy += 1
    return path


def make_jsonl(path: Path, size_mb: float) -> Path:
    """One record per KJV chapter and copy, verses suffixed with the copy number."""
    chapters: dict[tuple[str, int], list[str]] = {}
    testament: dict[tuple[str, int], str] = {}
    with open(SHARED / "kjv.jsonl") as fh:
        for line in fh:
            v = json.loads(line)
            key = (v["book"], v["chapter"])
            chapters.setdefault(key, []).append(v["text"])
            testament[key] = v["testament"]
    target, written, copy = size_mb * 1e6, 0, 0
    with open(path, "w") as fh:
        while written < target:
            for key, verses in chapters.items():
                row = {"text": " ".join(f"{t} {copy}" for t in verses), "label": testament[key]}
                line = json.dumps(row) + "\n"
                fh.write(line)
                written += len(line)
            copy += 1
    return path


def cls_recipe(path: Path, data: Path) -> Path:
    path.write_text(
        f"""version: 1
name: bench-prepare-cls
model: {{family: bert, task: classification, size: mini}}
data:
  source: {{path: {data}, text: text, label: label}}
  steps: [collapse_whitespace, dedupe]
  split: {{validation: 0.05, test: 0.05, seed: 0}}
  tokenizer: {{kind: pretrained, path: {TOKENIZER}}}
  max_length: 128
"""
    )
    return path


def run_prepare(recipe: str, overrides: list[str], cache: Path) -> dict:
    """One `ftc prepare --force --json` in its own process: peak RSS, wall, tokens."""
    env = {**os.environ, "FTC_CACHE_DIR": str(cache), "FTC_SHARED_DATA": str(SHARED)}
    cmd = [sys.executable, "-m", "fine_tune_cli", "prepare", recipe, *overrides, "--force"]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*cmd, "--json"], stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (kB)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    payload = json.loads(stdout.splitlines()[-1])
    tokens = _corpus_tokens(Path(payload["outputs"]["prepared"]))
    return {
        "command": " ".join(["ftc", *cmd[3:]]),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall),
    }


def _corpus_tokens(prepared: Path) -> int:
    """Tokens the tokenizer produced (packed: before cutting blocks; else all examples)."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    return sum(s.get("corpus_tokens", s["tokens"]) for s in manifest["splits"].values())


def datasets_arm(recipe: str, num_proc: int) -> dict:
    """datasets.Dataset.map(batched=True) with the same fast tokenizer on the same
    documents (ftc's reader and steps, untimed), timed alone."""
    from datasets import Dataset, disable_progress_bars

    from fine_tune_cli.data.sources import iter_text_records
    from fine_tune_cli.data.steps import STEPS, run_pipeline
    from fine_tune_cli.data.tokenizers import load_tokenizer
    from fine_tune_cli.recipe import load_recipe

    disable_progress_bars()
    loaded = load_recipe(recipe).recipe
    docs = list(iter_text_records(loaded.data.source, False))
    steps = [(STEPS.get(s.name), s.parsed_params()) for s in loaded.data.steps]
    from fine_tune_cli.data.steps import StepContext

    docs, _ = run_pipeline(docs, steps, StepContext())
    ds = Dataset.from_dict({"text": [d["text"] for d in docs]})
    del docs
    tok = load_tokenizer(TOKENIZER)  # the fast GPT-2 tokenizer ftc uses
    started = time.perf_counter()
    out = ds.map(
        lambda b: tok(b["text"], add_special_tokens=False, return_attention_mask=False),
        batched=True,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=["text"],
    )
    wall = time.perf_counter() - started
    tokens = sum(len(x) for x in out["input_ids"])
    return {"wall_s": round(wall, 1), "tokens": tokens, "tokens_per_s": round(tokens / wall)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 1000])
    ap.add_argument("--compare-mb", type=float, default=100, help="size of the datasets arm")
    ap.add_argument("--work", default=None, help="folder for corpora and caches (temp)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--skip", nargs="*", default=[], choices=["clm", "cls", "compare"])
    args = ap.parse_args()
    if not (SHARED / "kjv.txt").is_file():
        raise SystemExit(f"{SHARED}: no kjv.txt (set FTC_SHARED_DATA)")
    work = Path(args.work or tempfile.mkdtemp(prefix="ftc-bench-prepare-"))
    work.mkdir(parents=True, exist_ok=True)
    clm = str(REPO / "recipes" / "gpt2-clm-kjv.yaml")
    pretrained = ["data.tokenizer.kind=pretrained", f"data.tokenizer.path={TOKENIZER}"]
    results: dict = {"cpus": os.cpu_count(), "runs": []}
    for size in args.sizes_mb:
        text = make_text(work / f"kjv-{size:g}mb.txt", size)
        jsonl = make_jsonl(work / f"kjv-{size:g}mb.jsonl", size)
        arms = []
        if "clm" not in args.skip:
            arms.append(("gpt2-clm-kjv", clm, [f"data.source.path={text}", *pretrained]))
        if "cls" not in args.skip:
            arms.append(("cls+dedupe", str(cls_recipe(work / "cls.yaml", jsonl)), []))
        for name, recipe, overrides in arms:
            res = run_prepare(recipe, overrides, work / "cache")
            res.update(corpus=name, size_mb=size, bytes=(text if "clm" in name else jsonl)
                       .stat().st_size)  # fmt: skip
            results["runs"].append(res)
            print(json.dumps(res), flush=True)
            _clear(work / "cache")
    if "compare" not in args.skip:
        text = make_text(work / f"kjv-{args.compare_mb:g}mb.txt", args.compare_mb)
        over = [f"data.source.path={text}", *pretrained]
        compare = []
        for workers in (1, 2):
            res = run_prepare(clm, [*over, f"data.num_workers={workers}"], work / "cache")
            _clear(work / "cache")
            compare.append({"arm": f"ftc prepare, num_workers={workers}", **res})
            print(json.dumps(compare[-1]), flush=True)
        recipe = work / "clm-compare.yaml"
        recipe.write_text(
            f"extends: {clm}\nname: bench-prepare-clm\n"
            f"data:\n  source: {{path: {text}}}\n"
            f"  tokenizer: {{kind: pretrained, path: {TOKENIZER}}}\n"
        )
        for num_proc in (1, 2):
            res = datasets_arm(str(recipe), num_proc)
            compare.append({"arm": f"datasets map(batched=True), num_proc={num_proc}", **res})
            print(json.dumps(compare[-1]), flush=True)
        results["compare"] = compare
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def _clear(cache: Path) -> None:
    import shutil

    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
