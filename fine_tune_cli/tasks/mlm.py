"""BERT masked language modelling on packed blocks of the corpus.

Masks are drawn per batch from a generator seeded by the run seed and the batch's sample
indices, so masking is dynamic (differs across epochs) yet exactly reproducible on resume.
"""

from __future__ import annotations

import zlib
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
    from fine_tune_cli.data.stream import StreamEncoding
    from fine_tune_cli.recipe import Recipe


def batch_generator(seed: int, indices: np.ndarray) -> torch.Generator:
    import torch

    digest = zlib.crc32(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return torch.Generator().manual_seed(seed * 1_000_003 + digest)


@register_task
class MaskedLMTask(TextTask):
    """BERT MLM: 15% of non-special tokens selected (80% [MASK], 10% random, 10% kept)."""

    name = "mlm"
    recipe_task = "mlm"
    unit = "masked tokens"
    primary_metric = "mlm_accuracy"
    nsp = False  # mlm_nsp adds next-sentence prediction

    def __init__(self, tokenizer: Any, spec: Any, seed: int):
        import torch

        self.pad_id = tokenizer.pad_token_id
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.spec = spec
        self.seed = seed
        special = torch.zeros(self.vocab_size, dtype=torch.bool)
        special[list(tokenizer.all_special_ids)] = True
        self.special = special
        # WordPiece continuation pieces ("##ing") belong to the word before them.
        continuation = torch.zeros(self.vocab_size, dtype=torch.bool)
        for token, index in tokenizer.get_vocab().items():
            if token.startswith("##") and index < self.vocab_size:
                continuation[index] = True
        self.continuation = continuation

    @classmethod
    def encode(
        cls, recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
    ) -> dict[str, Any]:
        from fine_tune_cli.data.lm import encode_mlm

        return encode_mlm(recipe, splits, labels, out)

    @classmethod
    def stream_encoding(cls, recipe: Recipe) -> StreamEncoding | None:
        """The corpus packed into [CLS] ... [SEP] blocks of max_length."""
        from fine_tune_cli.data.stream import StreamEncoding

        return StreamEncoding(separator="sep", pack=True, wrap=True)

    @classmethod
    def from_recipe(cls, recipe: Recipe, prepared: Any) -> MaskedLMTask:
        return cls(prepared.tokenizer, recipe.mlm, recipe.train.seed)

    def mask(
        self, ids: torch.Tensor, attention: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels with -100 where nothing is predicted)."""
        import torch

        spec = self.spec
        candidates = (~self.special[ids]) & attention.bool()
        if spec.whole_word:
            # Draw per word start, then spread the choice over the word's pieces.
            starts = candidates & ~self.continuation[ids]
            chosen_start = starts & (torch.rand(ids.shape, generator=gen) < spec.probability)
            word_id = torch.cumsum(starts.long(), dim=1)
            chosen_words = torch.zeros_like(word_id, dtype=torch.bool)
            for row in range(ids.shape[0]):
                picked = word_id[row][chosen_start[row]]
                chosen_words[row] = torch.isin(word_id[row], picked) & (word_id[row] > 0)
            selected = chosen_words & candidates
        else:
            selected = candidates & (torch.rand(ids.shape, generator=gen) < spec.probability)
        labels = torch.where(selected, ids, torch.full_like(ids, -100))
        roll = torch.rand(ids.shape, generator=gen)
        to_mask = selected & (roll < spec.mask_ratio)
        to_random = (
            selected & (roll >= spec.mask_ratio) & (roll < spec.mask_ratio + spec.random_ratio)
        )
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=gen)
        masked = torch.where(to_mask, torch.full_like(ids, self.mask_id), ids)
        masked = torch.where(to_random, random_ids, masked)
        return masked, labels

    def collate(self, split: PreparedSplit, indices: np.ndarray) -> dict[str, torch.Tensor]:
        import torch

        batch = pad_batch(split, indices, self.pad_id)
        nsp_labels = batch.pop("labels", None)
        gen = batch_generator(self.seed, indices)
        batch["input_ids"], batch["labels"] = self.mask(
            batch["input_ids"], batch["attention_mask"], gen
        )
        if "token_type_ids" in split.extra:
            types = np.zeros(batch["input_ids"].shape, dtype=np.int64)
            for j, i in enumerate(indices):
                row = split.extra["token_type_ids"][split.offsets[i] : split.offsets[i + 1]]
                types[j, : len(row)] = row
            batch["token_type_ids"] = torch.from_numpy(types)
        if self.nsp:
            batch["next_sentence_label"] = nsp_labels
        return batch

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return max(1, int((batch["labels"] != -100).sum()))

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def outputs(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "next_sentence_label")}
        out = model(**inputs)
        logits = out.prediction_logits if self.nsp else out.logits
        return logits.float(), (out.seq_relationship_logits.float() if self.nsp else None)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch.nn.functional as F

        logits, nsp_logits = self.outputs(model, batch)
        # Sum over masked tokens / their count (at least 1): a short batch (an epoch's last
        # one can hold a single pair) may have no token selected, and a plain mean over
        # zero targets is NaN, which would abort the run as diverged.
        loss = F.cross_entropy(
            logits.view(-1, logits.shape[-1]), batch["labels"].view(-1), reduction="sum"
        ) / self.units(batch)
        if nsp_logits is not None:
            loss = loss + F.cross_entropy(nsp_logits, batch["next_sentence_label"])
        return loss

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

        loss_sum, count, correct, nsp_correct, nsp_loss, n = 0.0, 0, 0, 0, 0.0, 0
        for _, batch in batches_in_eval_mode(self, model, split, batch_size, device):
            with autocast():
                logits, nsp_logits = self.outputs(model, batch)
            labels = batch["labels"]
            picked = labels != -100
            loss_sum += float(F.cross_entropy(logits[picked], labels[picked], reduction="sum"))
            count += int(picked.sum())
            correct += int((logits[picked].argmax(-1) == labels[picked]).sum())
            if nsp_logits is not None:
                target = batch["next_sentence_label"]
                nsp_loss += float(F.cross_entropy(nsp_logits, target, reduction="sum"))
                nsp_correct += int((nsp_logits.argmax(-1) == target).sum())
                n += len(target)
        metrics = lm_metrics(loss_sum, count, correct, token_accuracy_name="mlm_accuracy")
        if self.nsp and n:
            metrics["nsp_accuracy"] = nsp_correct / n
            metrics["nsp_loss"] = nsp_loss / n
            metrics["loss"] = metrics["loss"] + metrics["nsp_loss"]
        return EvalResult(metrics)
