"""Model FLOPs and MFU: how far a run is from what the accelerator could do.

Training FLOPs per token = 6 N + 12 L d T (PaLM, appendix B; nanoGPT's estimate_mfu):
N is the weight count of the model's matmuls (forward 2 N, backward 4 N per token), and
each layer's attention scores and weighted sum add 2 x 2 d T per token forward (x3 with
the backward), T the sequence width the batch attends over. Embedding lookups and norms do
no matmul and are left out; a head applied once per sequence (BERT's pooler/classifier) is
counted per token, an overestimate below 1% at BERT-base size. Causal attention is counted
in full, as PaLM and nanoGPT do, so GPT-2 figures compare with theirs.

MFU = model FLOPs of the real (non-padding) tokens per second / the device's dense bf16
peak: padding is work the model did not need, so less padding shows as higher MFU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Dense bf16 tensor-core peak, TFLOP/s (vendor datasheets, no sparsity). Matched against
# torch.cuda.get_device_name() by the longest name contained in it (so "H100 PCIe" wins
# over "H100").
PEAK_BF16_TFLOPS: dict[str, float] = {
    "A100": 312.0,
    "A800": 312.0,
    "H100": 989.0,  # SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H800": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "L4": 121.0,
    "L40S": 362.0,
    "L40": 181.0,
    "A10G": 70.0,
    "A10": 125.0,
    "A6000": 154.8,
    "RTX 4090": 165.2,  # fp32 accumulate
    "RTX 3090": 71.0,
}


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs formula needs of a model."""

    matmul_weights: int  # N
    layers: int  # L
    hidden: int  # d
    seq_len: int  # T for inputs without input_ids (ViT: patches + [CLS])

    def flops_per_token(self, width: int | None = None) -> float:
        """Training (forward + backward) FLOPs per token at attention width `width`."""
        t = self.seq_len if width is None else width
        return 6.0 * self.matmul_weights + 12.0 * self.layers * self.hidden * t


def _matmul_modules() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    return (torch.nn.Linear, torch.nn.Conv2d, Conv1D)


def model_shape(model: torch.nn.Module) -> ModelShape:
    """N from the model's matmul modules (a tied lm_head counts: it is a matmul), L, d and
    the default width from its HF config (GPT-2's n_layer/n_embd answer to the same
    names through the config's attribute map)."""
    kinds = _matmul_modules()
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, kinds))
    config = model.config
    if getattr(config, "image_size", None) and getattr(config, "patch_size", None):
        seq = (config.image_size // config.patch_size) ** 2 + 1
    else:
        seq = int(getattr(config, "max_position_embeddings", 0) or 0)
    return ModelShape(n, int(config.num_hidden_layers), int(config.hidden_size), seq)


def batch_flops(shape: ModelShape, batch: dict[str, torch.Tensor], tokens: int) -> float:
    """Model FLOPs of one micro-batch: its real tokens at the batch's attention width."""
    ids = batch.get("input_ids")
    width = int(ids.shape[1]) if ids is not None else None
    return shape.flops_per_token(width) * tokens


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s; None off CUDA or for an unknown GPU."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def peak_for_name(name: str) -> float | None:
    """Dense bf16 peak (FLOP/s) of the longest table entry contained in a device name."""
    hits = [key for key in PEAK_BF16_TFLOPS if key in name]
    if not hits:
        return None
    return PEAK_BF16_TFLOPS[max(hits, key=len)] * 1e12
