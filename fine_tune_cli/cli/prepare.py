"""ftc prepare RECIPE [key=value ...] [--shard I/N | --merge] [--force] [--json]"""

from __future__ import annotations

import re
from typing import Any

import typer

from fine_tune_cli.cli.common import (
    ALLOW_DOWNLOAD_OPTION,
    JSON_OPTION,
    OVERRIDES_ARG,
    RECIPE_ARG,
    load_recipe_for_run,
    run_command,
)
from fine_tune_cli.errors import UsageError


def parse_shard(value: str) -> tuple[int, int]:
    """`I/N` with 0 <= I < N, else a usage error (exit 2)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match or int(match[1]) >= int(match[2]) or int(match[2]) < 1:
        raise UsageError(f"--shard: expected I/N with 0 <= I < N (e.g. 0/4), got '{value}'")
    return int(match[1]), int(match[2])


def prepare(
    recipe: str = RECIPE_ARG,
    overrides: list[str] | None = OVERRIDES_ARG,
    shard: str | None = typer.Option(
        None,
        "--shard",
        metavar="I/N",
        help="Tokenise the I-th of N slices (0-based) into the cache entry's staging area;"
        " run every I, then --merge (or train).",
    ),
    merge: bool = typer.Option(
        False, "--merge", help="Assemble the N finished shards into the cache entry."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when cached."),
    allow_download: bool = ALLOW_DOWNLOAD_OPTION,
    json_mode: bool = JSON_OPTION,
) -> None:
    """Build (or find in the cache) the prepared dataset of a recipe.

    \b
    Examples:
      ftc prepare demo
      ftc prepare my-recipe.yaml data.max_length=256 --force --json
      ftc prepare my-recipe.yaml --shard 0/2 & ftc prepare my-recipe.yaml --shard 1/2; wait
      ftc prepare my-recipe.yaml --merge
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.data.prepare import merge_shards, prepare_dataset, prepare_shard

        if shard is not None and merge:
            raise UsageError("--shard and --merge: use one (run the shards, then --merge)")
        slot = parse_shard(shard) if shard is not None else None
        loaded = load_recipe_for_run(recipe, overrides, allow_download)
        if slot is not None:
            done = prepare_shard(loaded.recipe, *slot, force=force)
            return {
                "cache_hit": done["cache_hit"],
                "hash": done["hash"],
                "outputs": {"prepared": done["path"]},
                "shard": f"{slot[0]}/{slot[1]}",
                "shards_done": done.get("shards_done"),
            }
        if merge:
            prepared, cached = merge_shards(loaded.recipe, force=force)
        else:
            prepared, cached = prepare_dataset(loaded.recipe, force=force)
        counts = {name: len(split) for name, split in prepared.splits.items()}
        return {
            "cache_hit": cached,
            "hash": prepared.hash,
            "outputs": {"prepared": str(prepared.path)},
            "splits": counts,
            "labels": prepared.label_names,
            "pipeline": prepared.manifest.get("pipeline", []),
            "leakage": prepared.manifest.get("leakage"),
            "seconds": prepared.manifest.get("seconds"),
            "tokens": {
                name: info.get("tokens") for name, info in prepared.manifest["splits"].items()
            },
        }

    def human(p: dict[str, Any]) -> None:
        if "shard" in p:
            if p["cache_hit"]:
                print(f"cache hit: {p['outputs']['prepared']} is complete; nothing to do")
                return
            total = int(p["shard"].split("/")[1])
            then = (
                "all done: run `ftc prepare RECIPE --merge` (or train)"
                if p["shards_done"] == total
                else "when all are, run `ftc prepare RECIPE --merge` (or train)"
            )
            print(f"shard {p['shard']} done ({p['shards_done']} of {total} shards done); {then}")
            return
        state = "cache hit: reused" if p["cache_hit"] else "prepared"
        print(f"{state} {p['outputs']['prepared']}")
        for step in p["pipeline"]:
            print(f"  {step['step']:<20} {step['in']:>8} -> {step['out']}")
        print("  splits: " + ", ".join(f"{k} {v}" for k, v in p["splits"].items()))
        if p["labels"]:
            print(f"  labels: {', '.join(p['labels'][:20])}")
        if p.get("leakage"):
            leak = p["leakage"]
            verb = "dropped" if leak["mode"] == "drop" else "kept"
            print(
                "  leakage: "
                + ", ".join(
                    f"{name} {leak[name]['near_duplicates_in_train']} of"
                    f" {leak[name]['records']} near-duplicate a train record"
                    for name in ("validation", "test")
                )
                + f" (threshold {leak['threshold']}; {verb})"
            )
        if not p["cache_hit"] and p.get("seconds") and not merge:
            tokens = sum(v or 0 for v in p["tokens"].values())
            rate = tokens / p["seconds"] if p["seconds"] else 0
            print(f"  {tokens:,} tokens in {p['seconds']:.1f} s ({rate:,.0f} tokens/s)")

    run_command("prepare", json_mode, body, human)
