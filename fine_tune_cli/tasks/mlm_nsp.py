"""BERT masked LM + next-sentence prediction on sentence pairs drawn within documents."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fine_tune_cli.tasks.base import register_task
from fine_tune_cli.tasks.mlm import MaskedLMTask

if TYPE_CHECKING:
    from fine_tune_cli.data.steps import Record
    from fine_tune_cli.data.stream import StreamEncoding
    from fine_tune_cli.recipe import Recipe


@register_task
class MaskedLMNextSentenceTask(MaskedLMTask):
    """MLM loss plus the NSP cross-entropy on (A, B) pairs; B is random half the time."""

    name = "mlm_nsp"
    recipe_task = "mlm_nsp"
    nsp = True
    # 2: random B segments drawn uniformly over segments, not per document.
    encoder_revision = 2

    @classmethod
    def stream_encoding(cls, recipe: Recipe) -> StreamEncoding | None:
        return None  # sentence pairs are drawn across whole documents: one list

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        if not recipe.data.source.group:
            return [
                "data.source.group: mlm_nsp builds sentence pairs within documents; name the"
                " document column (e.g. book)"
            ]
        return []

    @classmethod
    def encode(
        cls, recipe: Recipe, splits: dict[str, list[Record]], labels: list[str], out: Path
    ) -> dict[str, Any]:
        from fine_tune_cli.data.lm import encode_mlm_nsp

        return encode_mlm_nsp(recipe, splits, labels, out)
