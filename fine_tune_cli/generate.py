"""`ftc generate`: continue prompts with a trained causal LM (a run dir, its best/ or an
hf export), through transformers' generate() as the eval report's samples are.

One prompt (argument) prints its text and continuation to stdout, streamed token by
token on a terminal. Prompts from stdin (one per line) are a batch: one jsonl row per
prompt (`{"id", "prompt", "completions"}`) to `--out` (default stdout). Each prompt is
seeded with seed + its index, so a row does not depend on the rows before it.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fine_tune_cli.data.sources import STDIN
from fine_tune_cli.errors import DataError, RecipeError

log = logging.getLogger("ftc")


@dataclass(frozen=True)
class GenerateOptions:
    """Command-line settings; None takes the model recipe's `generate.*` value."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None  # 0: no top-k cut
    top_p: float | None = None
    seed: int | None = None  # None: a fresh seed, reported so the output can be reproduced
    num_return_sequences: int = 1


def read_prompts(prompt: str | None) -> tuple[list[str], bool]:
    """The prompts and whether they are a batch (stdin, one per line; blank lines skipped)."""
    if prompt is not None and prompt != STDIN:
        return [prompt], False
    if prompt is None and sys.stdin.isatty():
        raise RecipeError("give a PROMPT, or - to read prompts from stdin (one per line)")
    prompts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    if not prompts:
        raise DataError("<stdin>: no prompts (one per line)")
    return prompts, True


def load_generator(path: str) -> tuple[Any, Any, Any, Path, Any]:
    """(task class, model, tokenizer, model dir, recipe) of a model that can generate: sha256
    checked first, weights from safetensors only; anything else is exit 2 saying what to
    use instead."""
    import transformers

    from fine_tune_cli.console import set_progress_every
    from fine_tune_cli.engine.runtime import pick_device
    from fine_tune_cli.export.load import resolve_model_dir
    from fine_tune_cli.manifest import verify_manifest
    from fine_tune_cli.models.registry import get_model
    from fine_tune_cli.recipe import validate_tree
    from fine_tune_cli.runs import MODEL_CONFIG
    from fine_tune_cli.tasks import task_for

    root = resolve_model_dir(Path(path))
    manifest = verify_manifest(root)
    if "recipe" not in manifest:
        hint = (
            "a checkpoint: use its run dir (best/) or an hf export of it"
            if "step" in manifest
            else "not a model made by ftc"
        )
        raise RecipeError(f"{root}: manifest.json carries no recipe ({hint})")
    recipe = validate_tree(manifest["recipe"], default_origin=str(root / "manifest.json"))
    set_progress_every(recipe.log.progress_every)
    task = task_for(recipe.model)
    if not task.generates_samples:
        hint = " use `ftc predict` for a classifier" if task.predictable else ""
        raise RecipeError(
            f"{root}: ftc generate continues text with a causal language model (this one is"
            f" {recipe.model.family}/{recipe.model.task});{hint or ' it does not generate'}"
        )
    artefact = (manifest.get("artefact") or {}).get("file", "model.safetensors")
    if not (root / MODEL_CONFIG).is_file() or not str(artefact).endswith(".safetensors"):
        raise RecipeError(
            f"{root}: a {manifest.get('format')} export cannot generate; use the run dir,"
            " its best/ or an hf export"
        )
    cls = getattr(transformers, get_model(recipe.model).auto_class)
    model = cls.from_pretrained(str(root), local_files_only=True, use_safetensors=True)
    model = model.to(pick_device("auto")).eval()
    return task, model, task.saved_tokenizer(root), root, recipe


def sampling_for(options: GenerateOptions, spec: Any) -> Any:
    """The recipe's generate.* values, overridden by the command line."""
    from fine_tune_cli.tasks.base import Sampling

    top_k = spec.top_k if options.top_k is None else options.top_k
    return Sampling(
        max_new_tokens=options.max_new_tokens or spec.max_new_tokens,
        temperature=spec.temperature if options.temperature is None else options.temperature,
        top_k=top_k or None,
        top_p=spec.top_p if options.top_p is None else options.top_p,
        num_return_sequences=options.num_return_sequences,
    )


def run_generate(
    model_dir: str,
    prompt: str | None,
    options: GenerateOptions,
    *,
    out: str | None,
    json_mode: bool,
) -> dict[str, Any]:
    from fine_tune_cli.console import Progress
    from fine_tune_cli.predict import clean, write_jsonl
    from fine_tune_cli.runs import inspect_path

    if out == STDIN and json_mode:
        raise RecipeError("--out - writes completions to stdout; it cannot be combined with --json")
    _check(options)
    prompts, batch = read_prompts(prompt)
    task, model, tokenizer, root, recipe = load_generator(model_dir)
    sampling = sampling_for(options, recipe.generate)
    seed = secrets.randbelow(2**31) if options.seed is None else options.seed
    if options.seed is None:
        log.info("seed %d (pass --seed %d to get the same text again)", seed, seed)
    # jsonl rows to a file or stdout; None: the results go in the JSON object (--json) or
    # print as text (one prompt, streamed on a terminal).
    jsonl = out if out is not None else (STDIN if batch and not json_mode else None)
    stream = (
        jsonl is None
        and not json_mode
        and sampling.num_return_sequences == 1
        and sys.stdout.isatty()
    )
    # What the model saw in training went through the recipe's cleaning steps: so do prompts.
    cleaned = clean([{"id": i, "text": p} for i, p in enumerate(prompts)], recipe)
    rows = []
    with Progress(
        len(prompts),
        unit="prompt",
        name="generate",
        enabled=batch,  # one prompt needs no progress
    ) as progress:
        for i, (text, record) in enumerate(zip(prompts, cleaned, strict=True)):
            streamer = _streamer(tokenizer, text) if stream else None
            completions = task.continue_text(
                model, tokenizer, record["text"], sampling, seed + i, streamer
            )
            rows.append({"id": i, "prompt": text, "completions": completions})
            if jsonl == STDIN:  # row by row: a pipe reader sees each as soon as it is done
                sys.stdout.write(json.dumps(rows[-1], ensure_ascii=False) + "\n")
                sys.stdout.flush()
            progress.update(i + 1)
    if jsonl is not None and jsonl != STDIN:
        write_jsonl(Path(jsonl), rows)
    elif jsonl is None and not stream and not json_mode:
        print("\n\n".join(row["prompt"] + c for row in rows for c in row["completions"]))
    log.info("generated %d completion(s) with %s", sum(len(r["completions"]) for r in rows), root)
    run = inspect_path(root.parent).run
    payload: dict[str, Any] = {
        "run_dir": str(run) if run else None,
        "model_dir": str(root),
        "count": len(rows),
        "seed": seed,
        "settings": {
            "max_new_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "num_return_sequences": sampling.num_return_sequences,
        },
        "outputs": {"completions": jsonl},
    }
    if jsonl is None:
        payload["results"] = rows
        if not batch:
            payload["prompt"], payload["completions"] = rows[0]["prompt"], rows[0]["completions"]
    return payload


def _streamer(tokenizer: Any, prompt: str) -> Any:
    """Prints the prompt, then each new piece of text as generate() makes it."""
    from transformers import TextStreamer

    sys.stdout.write(prompt)
    sys.stdout.flush()
    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _check(options: GenerateOptions) -> None:
    """Command-line values the schema cannot check (it holds only the recipe's)."""
    problems = []
    if options.max_new_tokens is not None and options.max_new_tokens < 1:
        problems.append("--max-new-tokens must be at least 1")
    if options.temperature is not None and options.temperature < 0:
        problems.append("--temperature must be >= 0 (0: greedy)")
    if options.top_k is not None and options.top_k < 0:
        problems.append("--top-k must be >= 0 (0: no top-k cut)")
    if options.top_p is not None and not 0 < options.top_p <= 1:
        problems.append("--top-p must be in (0, 1]")
    if options.num_return_sequences < 1:
        problems.append("--num-return-sequences must be at least 1")
    if problems:
        raise RecipeError("; ".join(problems))
