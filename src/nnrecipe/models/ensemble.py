"""An ensemble as one module: the members' class probabilities averaged, returned as their logarithm.

log(mean p) is a valid set of logits (softmax(log p) = p), so everything downstream (argmax, softmax,
cross-entropy, ONNX export, serving) treats an ensemble like any classifier. Members may return logits or
a Hugging Face style output with `.logits`; the ensemble answers in the same form.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class MeanProbabilities(nn.Module):
    def __init__(self, members: list[nn.Module], weights: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights))

    def forward(self, x: torch.Tensor | None = None, **kwargs):
        # One named positional input (images) or keyword inputs (token ids): a signature torch.export can map
        # dynamic shapes onto, which *args is not.
        outputs = [m(**kwargs) if x is None else m(x, **kwargs) for m in self.members]
        probs = sum(
            w * (o if isinstance(o, torch.Tensor) else o.logits).float().softmax(-1)
            for w, o in zip(self.weights, outputs)
        )
        logits = probs.clamp_min(1e-12).log()  # a member certain of another class must not make -inf
        return logits if isinstance(outputs[0], torch.Tensor) else SimpleNamespace(logits=logits)

    def set_attn_implementation(self, name: str) -> None:
        """Hugging Face members' attention kernel (export asks for eager attention)."""
        for m in self.members:
            if hasattr(m, "set_attn_implementation"):
                m.set_attn_implementation(name)
