"""Dropout whose random mask costs a quarter of torch's on the CPU, swapped in for the duration of CPU training.

torch draws a dropout mask on the CPU one generator call per element (bernoulli_, about 5.5 ns an element
here): on MiniLM fine-tuning its 20 dropout layers took 31 ms of a 190 ms step. A 64-bit draw holds four
16-bit uniforms, so `random_` over a quarter as many int64s, viewed as int16 and compared with a threshold,
gives the same Bernoulli mask (p rounded to a multiple of 1/65,536) for a quarter of the generator calls.
The draws come from torch's own generator, so a seeded run repeats and a resumed one (the engine restores
that generator) is exact; they are not the draws F.dropout would make. On CUDA torch's fused kernel is
already fast and is kept. A Hugging Face encoder's attention-probability dropout, which SDPA draws inside
its own call, goes through the module's FastDropout too (`attention_with_fast_dropout`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 65_536  # 16-bit uniforms


class FastDropout(nn.Dropout):
    """nn.Dropout with the mask drawn 16 bits at a time on the CPU (still an nn.Dropout to code that asks)."""

    def __init__(self, p: float):
        super().__init__(p)
        self.threshold = round(p * _LEVELS) - _LEVELS // 2  # int16 values below it are dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits uniform
        uniforms = words.view(torch.int16)[:n].view(x.shape)
        # the scale is applied after the 0/1 mask, as a Python float: 1/(1-p) rounded to bf16 would be 0.15% off
        return (x * torch.ge(uniforms, self.threshold).to(x.dtype)).mul_(1.0 / (1.0 - self.p))


ATTENTION = "nnrecipe_cpu_attention"  # the name a Hugging Face model's config selects it by


def attention_with_fast_dropout(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention function for bidirectional encoders in CPU training: softmax(QK^T s + mask),
    the attention module's own dropout (a FastDropout here), times V, as BERT's eager attention computes it.
    SDPA on the CPU with dropout > 0 runs these same steps with torch's per-element dropout: on a MiniLM
    training step (batch 32, bf16) 201 -> 196 ms at 24 tokens and 386 -> 286 ms at 48. Anything else
    (evaluation, causal or grouped-query attention, a position bias, a cache) goes to SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    is_causal = kwargs.get("is_causal")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    drop = getattr(module, "dropout", None)
    if (
        not module.training
        or dropout == 0
        or causal
        or not isinstance(drop, FastDropout)
        or getattr(module, "num_key_value_groups", 1) != 1
        or any(kwargs.get(k) is not None for k in ("position_bias", "cache", "softcap"))
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    weights = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # sdpa_mask's form: True where attended
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask
    weights = drop(torch.softmax(weights, dim=-1))
    return torch.matmul(weights.to(value.dtype), value).transpose(1, 2).contiguous(), None


def _sdpa_configs(model: nn.Module) -> list:
    """The Hugging Face configs in `model` that select SDPA attention (a peft wrapper's base model's too)."""
    found = {}
    for m in model.modules():
        config = getattr(m, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa":
            found[id(config)] = config
    return list(found.values())


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention_with_fast_dropout)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the same masks as SDPA


@contextmanager
def fast_dropout(model: nn.Module) -> Iterator[int]:
    """Every nn.Dropout in `model` with p > 0 replaced by FastDropout for the duration, and a Hugging Face
    model's SDPA attention by `attention_with_fast_dropout` (so its attention-probability dropout is a
    FastDropout too); the originals put back after (so exports, EMA copies and checkpoints see the model as
    built). Yields how many dropouts."""
    slots = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Dropout and child.p > 0
    ]
    configs = _sdpa_configs(model) if slots else []
    if configs:
        _register_attention()
    for parent, name, child in slots:
        setattr(parent, name, FastDropout(child.p))
    for config in configs:
        config._attn_implementation = ATTENTION
    try:
        yield len(slots)
    finally:
        for parent, name, child in slots:
            setattr(parent, name, child)
        for config in configs:
            config._attn_implementation = "sdpa"
