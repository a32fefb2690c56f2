"""Baseline for `make bench`: the stock transformers Trainer on exactly what
`ftc train RECIPE` trains — the same prepared data (ftc's cache), the same model built
from the same config and seed, the same batch size, steps, optimizer (AdamW), learning
rate, warmup and linear decay, weight decay and clipping — then accuracy on the
validation split. Prints one JSON line.

    python scripts/bench_trainer.py demo train.epochs=1
    python scripts/bench_trainer.py --arm best demo train.max_steps=100

Arms: `stock` (Trainer defaults: random sampler, DataCollatorWithPadding), `best` (the
same plus train_sampling_strategy="group_by_length" and optim="adamw_torch_fused") and
`bare` (a plain PyTorch loop over ftc's length-grouped batches: what ftc's engine costs
on top). Every arm reports samples/s and real tokens/s over its training time, the
padding share of the batches it trained on, peak RSS and validation accuracy.

Only text classification recipes with a linear or cosine schedule are supported (that
is what the comparison needs; other recipes are refused with exit 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class Counted:
    """Wraps a collator: counts the real tokens and the padded cells it hands out."""

    def __init__(self, collate: Any):
        self.collate = collate
        self.real = 0
        self.cells = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(features)
        self.real += int(batch["attention_mask"].sum())
        self.cells += int(batch["attention_mask"].numel())
        return batch


def bare_loop(recipe: Any, model: Any, train: Any, pad_id: int, steps: int) -> Counted:
    """ftc's batching (train.batching, seeded order, dynamic padding) under the plainest
    loop: AdamW, linear warmup/decay, clipping. No logging, checkpoints or evals."""
    import torch

    from fine_tune_cli.data.batching import pad_batch, step_groups, train_order

    spec = recipe.train
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.optim.lr,
        betas=tuple(recipe.optim.betas),
        eps=recipe.optim.eps,
        weight_decay=recipe.optim.weight_decay,
    )
    warmup = recipe.schedule.warmup_steps or int(recipe.schedule.warmup_ratio * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, warmup) if s < warmup else (steps - s) / max(1, steps - warmup)
    )
    counted = Counted(lambda idx: pad_batch(train, idx, pad_id))
    model.train()
    step, epoch = 0, 0
    while step < steps:
        order = train_order(train, True, spec.batching, spec.seed, epoch, spec.batch_size)
        for group in step_groups(order, spec.batch_size, spec.grad_accum):
            for idx in group:
                batch = counted(idx)
                loss = model(**batch).loss * (len(idx) / sum(len(i) for i in group))
                loss.backward()
            if spec.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step >= steps:
                break
        epoch += 1
    return counted


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    arm = "stock"
    if argv[:1] == ["--arm"] and len(argv) > 1:
        arm, argv = argv[1], argv[2:]
    if arm not in ("stock", "best", "bare"):
        print(f"error: --arm {arm}: choose stock, best or bare", file=sys.stderr)
        return 2
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from fine_tune_cli.data.prepare import prepare_dataset
    from fine_tune_cli.engine.trainer import total_steps
    from fine_tune_cli.errors import FtcError
    from fine_tune_cli.models.registry import build_model
    from fine_tune_cli.recipe import load_recipe
    from fine_tune_cli.tasks import task_for

    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        recipe = load_recipe(argv[0], argv[1:]).recipe
        if recipe.model.task != "classification" or recipe.model.family == "vit":
            raise SystemExit(f"error: {argv[0]}: the baseline covers text classification only")
        if recipe.schedule.name not in ("linear", "cosine") or recipe.optim.name != "adamw":
            raise SystemExit("error: the baseline needs optim adamw and a linear/cosine schedule")
        prepared, _ = prepare_dataset(recipe)
    except FtcError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code

    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model, task_for(recipe.model).build_context(recipe, prepared))
    train, valid = prepared.splits["train"], prepared.splits["validation"]

    def rows(split: object) -> list[dict[str, object]]:
        return [
            {"input_ids": split.example(i).tolist(), "labels": int(split.labels[i])}
            for i in range(len(split))
        ]

    spec = recipe.train
    steps = total_steps(recipe, len(train), world=1)
    warmup = recipe.schedule.warmup_steps or int(recipe.schedule.warmup_ratio * steps)
    best = {"train_sampling_strategy": "group_by_length", "optim": "adamw_torch_fused"}
    with tempfile.TemporaryDirectory(prefix="ftc-bench-") as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=spec.batch_size,
            per_device_eval_batch_size=spec.eval_batch_size or spec.batch_size,
            gradient_accumulation_steps=spec.grad_accum,
            learning_rate=recipe.optim.lr,
            weight_decay=recipe.optim.weight_decay,
            adam_beta1=recipe.optim.betas[0],
            adam_beta2=recipe.optim.betas[1],
            adam_epsilon=recipe.optim.eps,
            lr_scheduler_type=recipe.schedule.name,
            warmup_steps=warmup,
            max_grad_norm=spec.clip_grad_norm or 0.0,
            seed=spec.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            **(best if arm == "best" else {}),
        )
        counted = Counted(DataCollatorWithPadding(prepared.tokenizer))
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=rows(train),
            data_collator=counted,
            processing_class=prepared.tokenizer,
        )
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its own summary
            t0 = time.perf_counter()
            if arm == "bare":
                counted = bare_loop(recipe, model, train, prepared.tokenizer.pad_token_id, steps)
            else:
                trainer.train()
            train_s = time.perf_counter() - t0
            trainer.data_collator = DataCollatorWithPadding(prepared.tokenizer)  # eval: uncounted
            output = trainer.predict(rows(valid))
    accuracy = float((np.argmax(output.predictions, axis=-1) == output.label_ids).mean())
    print(
        json.dumps(
            {
                "steps": steps,
                "train_seconds": round(train_s, 2),
                "samples_per_s": round(steps * spec.batch_size * spec.grad_accum / train_s, 1),
                "tokens_per_s": round(counted.real / train_s, 1),
                "padding": round(1 - counted.real / max(1, counted.cells), 4),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "validation_accuracy": round(accuracy, 4),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
