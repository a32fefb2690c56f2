"""BERT: sequence classification (MLM and MLM+NSP build on the same presets)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fine_tune_cli.models.registry import (
    BuildContext,
    Family,
    build_or_load,
    label_kwargs,
    preset_config,
    register_family,
    register_model,
)

if TYPE_CHECKING:
    from torch import nn

    from fine_tune_cli.recipe import ModelSpec

register_family(
    Family(
        name="bert",
        presets={
            # tiny is what the tests use; mini is BERT-tiny's shape (h=128, 2 layers).
            "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 256},
            "mini": {"hidden_size": 128, "num_layers": 2, "num_heads": 2, "intermediate_size": 512},
            "small": {
                "hidden_size": 256,
                "num_layers": 4,
                "num_heads": 4,
                "intermediate_size": 1024,
            },
            "base": {
                "hidden_size": 768,
                "num_layers": 12,
                "num_heads": 12,
                "intermediate_size": 3072,
            },
        },
        tokenizer_kind="wordpiece",
        modality="text",
        head_modules=("classifier", "cls"),
    )
)


def bert_config(spec: ModelSpec, ctx: BuildContext, **extra: object):
    from transformers import BertConfig

    values = preset_config(spec)
    dropout = values.get("dropout", 0.1)
    return BertConfig(
        vocab_size=ctx.vocab_size,
        hidden_size=values["hidden_size"],
        num_hidden_layers=values["num_layers"],
        num_attention_heads=values["num_heads"],
        intermediate_size=values["intermediate_size"],
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=max(512, ctx.max_length),
        pad_token_id=ctx.pad_token_id or 0,
        **extra,
    )


@register_model("bert", "classification", auto_class="AutoModelForSequenceClassification")
def build_classifier(spec: ModelSpec, ctx: BuildContext) -> nn.Module:
    from transformers import BertForSequenceClassification

    return build_or_load(BertForSequenceClassification, spec, ctx, bert_config, **label_kwargs(ctx))


@register_model("bert", "mlm", auto_class="AutoModelForMaskedLM")
def build_mlm(spec: ModelSpec, ctx: BuildContext) -> nn.Module:
    from transformers import BertForMaskedLM

    return build_or_load(BertForMaskedLM, spec, ctx, bert_config)


@register_model("bert", "mlm_nsp", auto_class="AutoModelForPreTraining")
def build_pretraining(spec: ModelSpec, ctx: BuildContext) -> nn.Module:
    from transformers import BertForPreTraining

    return build_or_load(BertForPreTraining, spec, ctx, bert_config)


@register_model("bert", "token_classification", auto_class="AutoModelForTokenClassification")
def build_token_classifier(spec: ModelSpec, ctx: BuildContext) -> nn.Module:
    from transformers import BertForTokenClassification

    return build_or_load(BertForTokenClassification, spec, ctx, bert_config, **label_kwargs(ctx))
