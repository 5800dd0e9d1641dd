"""Dropout whose random mask costs a quarter of torch's on the CPU, swapped in for the duration of CPU training.

torch draws a dropout mask on the CPU one generator call per element (bernoulli_, about 5.5 ns an element
here): on MiniLM fine-tuning its 20 dropout layers took 31 ms of a 190 ms step. A 64-bit draw holds four
16-bit uniforms, so `random_` over a quarter as many int64s, viewed as int16 and compared with a threshold,
gives the same Bernoulli mask (p rounded to a multiple of 1/65,536) for a quarter of the generator calls.
The draws come from torch's own generator, so a seeded run repeats and a resumed one (the engine restores
that generator) is exact; they are not the draws F.dropout would make. On CUDA torch's fused kernel is
already fast and is kept."""

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


@contextmanager
def fast_dropout(model: nn.Module) -> Iterator[int]:
    """Every nn.Dropout in `model` with p > 0 replaced by FastDropout for the duration, the originals put
    back after (so exports, EMA copies and checkpoints see the model as built). Yields how many."""
    slots = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Dropout and child.p > 0
    ]
    for parent, name, child in slots:
        setattr(parent, name, FastDropout(child.p))
    try:
        yield len(slots)
    finally:
        for parent, name, child in slots:
            setattr(parent, name, child)
