"""Attribution methods on any classifier whose input embeddings are one layer
(`model.get_input_embeddings()`: BERT's and GPT-2's word embeddings, ViT's patch
embeddings): Integrated Gradients (captum) over that layer's output, and attention
rollout (Abnar & Zuidema, 2020) from the attention weights.

Both return one score per position of the embedding layer's output (a token, a patch);
the task's explainer turns positions into words or a patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# Interpolation points evaluated per forward/backward pass: bounds memory on long inputs.
IG_BATCH = 16


@dataclass
class Attribution:
    """Per-position scores and what they explain.

    For IG the scores sum to `f_input - f_baseline` up to `delta` (completeness): F is the
    target class's probability. Rollout scores are shares of attention flow (sum to 1)
    and do not depend on the target class."""

    scores: np.ndarray  # (positions,)
    probs: np.ndarray  # the model's class probabilities for the input
    f_input: float | None = None
    f_baseline: float | None = None
    delta: float | None = None  # sum(scores) - (f_input - f_baseline)

    def summary(self) -> dict[str, Any]:
        """The IG figures a reader checks first: how far completeness is off, absolute and
        as a share of the change being explained."""
        if self.delta is None or self.f_input is None or self.f_baseline is None:
            return {}
        change = abs(self.f_input - self.f_baseline)
        return {
            "f_input": round(self.f_input, 6),
            "f_baseline": round(self.f_baseline, 6),
            "convergence_delta": float(f"{self.delta:.4g}"),
            "relative_delta": float(f"{abs(self.delta) / change:.4g}") if change > 0 else None,
        }


def integrated_gradients(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    blank: dict[str, torch.Tensor] | None,
    target: int | None,
    steps: int,
) -> Attribution:
    """IG of the target class's probability with respect to the input embedding layer's
    output, from a baseline: the embedding of `blank` (the input with its content replaced
    by padding), or an all-zero embedding when `blank` is None. `target` None: the
    predicted class.

    This is captum's LayerIntegratedGradients written out, because a zero baseline lives in
    the layer's output space, which LayerIntegratedGradients only reaches through inputs:
    the layer's output is replaced by a forward hook with each interpolated point, and
    captum's IntegratedGradients integrates the gradient along the straight path."""
    import torch

    from fine_tune_cli.optional import require

    captum_attr = require("captum.attr", "ftc explain --method ig")
    layer = model.get_input_embeddings()
    with torch.no_grad():
        emb, logits = _layer_output(model, layer, inputs)
        base = _layer_output(model, layer, blank)[0] if blank else torch.zeros_like(emb)
    if target is None:
        target = int(logits[0].argmax())
    replaced: dict[str, torch.Tensor] = {}

    def swap(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        return replaced["emb"]

    def forward(points: torch.Tensor) -> torch.Tensor:
        replaced["emb"] = points
        n = points.shape[0]
        batch = {k: v.expand(n, *v.shape[1:]) for k, v in inputs.items()}
        return torch.softmax(model(**batch).logits.float(), dim=-1)[:, target]

    handle = layer.register_forward_hook(swap)
    try:
        ig = captum_attr.IntegratedGradients(forward)
        attr, delta = ig.attribute(
            emb,
            baselines=base,
            n_steps=steps,
            internal_batch_size=IG_BATCH,
            return_convergence_delta=True,
        )
        with torch.no_grad():
            f_input, f_baseline = float(forward(emb)[0]), float(forward(base)[0])
    finally:
        handle.remove()
    return Attribution(
        scores=attr[0].sum(dim=-1).detach().double().cpu().numpy(),
        probs=torch.softmax(logits[0].float(), dim=-1).double().cpu().numpy(),
        f_input=f_input,
        f_baseline=f_baseline,
        delta=float(delta[0]),
    )


def _layer_output(
    model: torch.nn.Module, layer: torch.nn.Module, inputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding layer's output on `inputs` and the model's logits."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    try:
        logits = model(**inputs).logits
    finally:
        handle.remove()
    return seen[0], logits


def attention_rollout(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Attribution:
    """Attention rollout: per layer, heads averaged, the residual connection added as an
    identity (0.5 A + 0.5 I, rows renormalised), layers multiplied from the input up.
    `scores` here is the whole (seq, seq) flow matrix; the explainer takes the row of the
    position the classifier reads. Needs eager attention (the fused kernels do not return
    attention weights): the model is switched to it first."""
    import torch

    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    rollout = None
    for attention in out.attentions:
        a = attention[0].float().mean(dim=0)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    assert rollout is not None, "a transformer has at least one attention layer"
    return Attribution(
        scores=rollout.double().cpu().numpy(),
        probs=torch.softmax(out.logits[0].float(), dim=-1).double().cpu().numpy(),
    )
