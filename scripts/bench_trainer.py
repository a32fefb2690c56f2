"""Baseline for `make bench`: the stock transformers Trainer on exactly what
`ftc train RECIPE` trains — the same prepared data (ftc's cache), the same model built
from the same config and seed, the same batch size, steps, optimizer (AdamW), learning
rate, warmup and linear decay, weight decay and clipping — then accuracy on the
validation split. Prints one JSON line.

    python scripts/bench_trainer.py demo train.epochs=1

Only text classification recipes with a linear or cosine schedule are supported (that
is what the comparison needs; other recipes are refused with exit 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: list[str]) -> int:
    started = time.perf_counter()
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
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=rows(train),
            data_collator=DataCollatorWithPadding(prepared.tokenizer),
            processing_class=prepared.tokenizer,
        )
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its own summary
            t0 = time.perf_counter()
            trainer.train()
            train_s = time.perf_counter() - t0
            output = trainer.predict(rows(valid))
    accuracy = float((np.argmax(output.predictions, axis=-1) == output.label_ids).mean())
    print(
        json.dumps(
            {
                "steps": steps,
                "train_seconds": round(train_s, 2),
                "samples_per_s": round(steps * spec.batch_size * spec.grad_accum / train_s, 1),
                "validation_accuracy": round(accuracy, 4),
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
