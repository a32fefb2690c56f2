"""ftc generate RUN_DIR|MODEL_DIR [PROMPT|-] [--max-new-tokens N] [--temperature T]
[--top-k K] [--top-p P] [--seed S] [--num-return-sequences N] [--out FILE|-] [--json]"""

from __future__ import annotations

from typing import Any

import typer

from fine_tune_cli.cli.common import JSON_OPTION, run_command


def generate(
    model_dir: str = typer.Argument(
        ..., metavar="RUN_DIR|MODEL_DIR", help="A causal LM run dir, its best/ or an hf export."
    ),
    prompt: str | None = typer.Argument(
        None,
        metavar="PROMPT|-",
        help="Text to continue; - (or none, with piped stdin) reads prompts, one per line.",
    ),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", metavar="N", help="Tokens per completion (recipe generate.*)."
    ),
    temperature: float | None = typer.Option(
        None, "--temperature", metavar="T", help="Sampling temperature; 0 is greedy."
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", metavar="K", help="Sample from the K likeliest tokens; 0: no cut."
    ),
    top_p: float | None = typer.Option(
        None, "--top-p", metavar="P", help="Sample from the smallest token set of mass P."
    ),
    seed: int | None = typer.Option(
        None, "--seed", metavar="S", help="Same seed, same text (default: a fresh one, logged)."
    ),
    num_return_sequences: int = typer.Option(
        1, "--num-return-sequences", metavar="N", help="Completions per prompt."
    ),
    out: str | None = typer.Option(
        None,
        "--out",
        metavar="FILE|-",
        help="Write jsonl rows {id, prompt, completions}; - is stdout (the default for stdin"
        " prompts).",
    ),
    json_mode: bool = JSON_OPTION,
) -> None:
    """Continue text with a trained causal language model (GPT-2 clm runs).

    Settings not given come from the model's recipe (generate.max_new_tokens, top_k,
    top_p, temperature). One PROMPT prints its continuation (streamed on a terminal);
    prompts on stdin, one per line, give one jsonl row each.

    \b
    Examples:
      ftc generate runs/gpt2-clm-kjv "And God said" --seed 1
      ftc generate gpt2-clm-kjv "In the beginning" --temperature 0 --json
      cat prompts.txt | ftc generate gpt2-clm-kjv - --out completions.jsonl
    """

    def body() -> dict[str, Any]:
        from fine_tune_cli.generate import GenerateOptions, run_generate

        options = GenerateOptions(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            num_return_sequences=num_return_sequences,
        )
        return run_generate(model_dir, prompt, options, out=out, json_mode=json_mode)

    def human(p: dict[str, Any]) -> None:
        destination = p["outputs"]["completions"]
        if destination not in (None, "-"):
            print(f"wrote {p['count']} prompt(s) with completions to {destination}")

    run_command("generate", json_mode, body, human)
