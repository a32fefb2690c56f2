"""GPT-2 causal language modelling: next-token prediction on packed blocks (documents
joined with EOS, no padding inside a block); eval reports show generated samples."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fine_tune_cli.data.batching import pad_batch
from fine_tune_cli.evaluation.metrics import lm_metrics
from fine_tune_cli.tasks.base import (
    Autocast,
    EvalResult,
    batches_in_eval_mode,
    no_grad,
    register_task,
)
from fine_tune_cli.tasks.modality import TextTask

if TYPE_CHECKING:
    import torch

    from fine_tune_cli.data.steps import Record
    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.recipe import Recipe


@register_task
class CausalLMTask(TextTask):
    """Next-token cross-entropy; greedy and top-k continuations of held-out prompts."""

    name = "clm"
    recipe_task = "clm"
    unit = "tokens"
    primary_metric = "loss"  # perplexity is exp(loss): tolerances on the loss mean the same
    generates_samples = True
    pads_batches = False  # packed blocks of equal length: nothing to group

    def __init__(self, tokenizer: Any, generate: Any, seed: int):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.generate_spec = generate
        self.seed = seed

    @classmethod
    def encode(
        cls, recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
    ) -> dict[str, Any]:
        from fine_tune_cli.data.lm import encode_clm

        return encode_clm(recipe, splits, labels, out)

    @classmethod
    def from_recipe(cls, recipe: Recipe, prepared: Any) -> CausalLMTask:
        return cls(prepared.tokenizer, recipe.generate, recipe.train.seed)

    def collate(self, split: PreparedSplit, indices: np.ndarray) -> dict[str, torch.Tensor]:
        batch = pad_batch(split, indices, self.pad_id)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return max(1, int((batch["labels"][:, 1:] != -100).sum()))

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def _token_losses(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shift_logits = logits[:, :-1].float()
        target = batch["labels"][:, 1:]
        return shift_logits, target

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch.nn.functional as F

        logits, target = self._token_losses(model, batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    @no_grad
    def evaluate(
        self,
        model: torch.nn.Module,
        split: PreparedSplit,
        batch_size: int,
        device: torch.device,
        autocast: Autocast,
    ) -> EvalResult:
        import torch.nn.functional as F

        loss_sum, count = 0.0, 0
        for _, batch in batches_in_eval_mode(self, model, split, batch_size, device):
            with autocast():
                logits, target = self._token_losses(model, batch)
            loss_sum += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
                )
            )
            count += int((target != -100).sum())
        return EvalResult(lm_metrics(loss_sum, count))

    @no_grad
    def samples(
        self, model: torch.nn.Module, split: PreparedSplit, device: torch.device
    ) -> list[dict[str, Any]]:
        """Greedy and top-k continuations of held-out prompts (fixed seed)."""
        import torch

        spec = self.generate_spec
        out: list[dict[str, Any]] = []
        if not len(split) or not spec.samples:
            return out
        picks = np.linspace(0, len(split) - 1, num=min(spec.samples, len(split))).astype(int)
        for i in picks:
            prompt = (
                torch.as_tensor(
                    np.asarray(split.example(int(i))[: spec.prompt_tokens], dtype=np.int64)
                )
                .unsqueeze(0)
                .to(device)
            )
            prompt_text = self.tokenizer.decode(prompt[0])
            for mode in ("greedy", f"top-{spec.top_k}"):
                torch.manual_seed(self.seed + int(i))  # generate() samples from the global RNG
                ids = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=spec.max_new_tokens,
                    do_sample=mode != "greedy",
                    top_k=spec.top_k if mode != "greedy" else None,
                    pad_token_id=self.pad_id,
                )
                text = self.tokenizer.decode(ids[0, prompt.shape[1] :])
                out.append({"text": prompt_text, "decoding": mode, "continuation": text})
        return out
