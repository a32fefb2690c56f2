"""GPT-2 causal language modelling: next-token prediction on packed blocks (documents
joined with EOS, no padding inside a block); eval reports show generated samples and
`ftc generate` continues prompts, both through transformers' generate()."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fine_tune_cli.data.batching import pad_batch
from fine_tune_cli.evaluation.metrics import lm_metrics
from fine_tune_cli.tasks.base import (
    Autocast,
    EvalResult,
    Sampling,
    batches_in_eval_mode,
    no_grad,
    register_task,
)
from fine_tune_cli.tasks.modality import TextTask

if TYPE_CHECKING:
    import torch

    from fine_tune_cli.data.steps import Record
    from fine_tune_cli.data.store import PreparedSplit
    from fine_tune_cli.data.stream import StreamEncoding
    from fine_tune_cli.recipe import Recipe

log = logging.getLogger("ftc")


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
    def stream_encoding(cls, recipe: Recipe) -> StreamEncoding | None:
        """Documents joined by EOS, packed into blocks of max_length."""
        from fine_tune_cli.data.stream import StreamEncoding

        return StreamEncoding(separator="eos", pack=True)

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
        modes = {
            "greedy": Sampling(spec.max_new_tokens, temperature=0),
            f"top-{spec.top_k}": Sampling(
                spec.max_new_tokens, spec.temperature, spec.top_k, spec.top_p
            ),
        }
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
            for mode, sampling in modes.items():
                ids = _generate(model, prompt, sampling, self.seed + int(i), self.pad_id)
                text = self.tokenizer.decode(ids[0])
                out.append({"text": prompt_text, "decoding": mode, "continuation": text})
        return out

    @classmethod
    @no_grad
    def continue_text(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        prompt: str,
        sampling: Sampling,
        seed: int,
        streamer: Any = None,
    ) -> list[str]:
        """Continuations of `prompt`, which starts a document as training saw them: after
        EOS (documents are joined with EOS), so an empty prompt is a fresh document too."""
        import torch

        ids = [tokenizer.eos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        room = model.config.max_position_embeddings - sampling.max_new_tokens
        if len(ids) > room:  # keep the end of a long prompt: it is what gets continued
            log.warning("prompt of %d tokens cut to its last %d (the context)", len(ids), room)
            ids = ids[-max(room, 1) :]
        tensor = torch.as_tensor([ids], dtype=torch.long, device=model.device)
        out = _generate(model, tensor, sampling, seed, tokenizer.pad_token_id, streamer)
        return [tokenizer.decode(row, skip_special_tokens=True) for row in out]


def _generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    sampling: Sampling,
    seed: int,
    pad_id: int | None,
    streamer: Any = None,
) -> torch.Tensor:
    """transformers' generate() on one (1, n) prompt: the new token ids, one row per
    returned sequence. Sampling draws from torch's global RNG, hence the seed."""
    import torch

    torch.manual_seed(seed)
    sampled = {
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "temperature": sampling.temperature,
    }
    ids = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=sampling.max_new_tokens,
        do_sample=sampling.do_sample,
        num_return_sequences=sampling.num_return_sequences,
        pad_token_id=pad_id,
        streamer=streamer,
        **(sampled if sampling.do_sample else {"top_k": None}),
    )
    return ids[:, prompt.shape[1] :]
