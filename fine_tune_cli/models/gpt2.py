"""GPT-2: causal LM pretraining and sequence classification (last non-pad token)."""

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
        name="gpt2",
        presets={
            "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 256},
            "mini": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 512},
            "small": {
                "hidden_size": 256,
                "num_layers": 6,
                "num_heads": 8,
                "intermediate_size": 1024,
            },
            "base": {
                "hidden_size": 768,
                "num_layers": 12,
                "num_heads": 12,
                "intermediate_size": 3072,
            },
        },
        tokenizer_kind="bpe",
        modality="text",
        head_modules=("score", "lm_head"),
        pooled_token="last",
    )
)


def gpt2_config(spec: ModelSpec, ctx: BuildContext, **extra: object):
    from transformers import GPT2Config

    values = preset_config(spec)
    dropout = values.get("dropout", 0.1)
    eos = ctx.special_ids.get("eos", ctx.pad_token_id)
    return GPT2Config(
        vocab_size=ctx.vocab_size,
        n_embd=values["hidden_size"],
        n_layer=values["num_layers"],
        n_head=values["num_heads"],
        n_inner=values["intermediate_size"],
        n_positions=max(1024, ctx.max_length),
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=ctx.pad_token_id,
        **extra,
    )


@register_model("gpt2", "clm", auto_class="AutoModelForCausalLM")
def build_clm(spec: ModelSpec, ctx: BuildContext) -> nn.Module:
    from transformers import GPT2LMHeadModel

    return build_or_load(GPT2LMHeadModel, spec, ctx, gpt2_config)


@register_model("gpt2", "classification", auto_class="AutoModelForSequenceClassification")
def build_classifier(spec: ModelSpec, ctx: BuildContext) -> nn.Module:
    from transformers import GPT2ForSequenceClassification

    # Pooling takes the last token that is not padding, so the pad id must be set.
    model = build_or_load(
        GPT2ForSequenceClassification, spec, ctx, gpt2_config, **label_kwargs(ctx)
    )
    model.config.pad_token_id = ctx.pad_token_id
    return model
