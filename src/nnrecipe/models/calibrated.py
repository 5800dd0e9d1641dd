"""Temperature scaling (Guo et al., 2017) as a module: the logits divided by one fitted temperature.

Wrapping the run's model (in `TaskFamily.inference`) means evaluate, predict, serve and export all use
it, and an exported graph holds the division. Members return logits or a `.logits` output; so does this.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from nnrecipe.errors import UserError


class Tempered(nn.Module):
    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.inner = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor | None = None, **kwargs):
        # One named positional input (images) or keyword inputs (token ids), as torch.export needs.
        out = self.inner(**kwargs) if x is None else self.inner(x, **kwargs)
        if isinstance(out, torch.Tensor):
            return out / self.temperature
        return SimpleNamespace(logits=out.logits / self.temperature)

    def get_input_embeddings(self) -> nn.Module:
        """The text model's token embeddings (what text explanations attribute to)."""
        return self.inner.get_input_embeddings()

    def set_attn_implementation(self, name: str) -> None:
        if hasattr(self.inner, "set_attn_implementation"):
            self.inner.set_attn_implementation(name)


def uncalibrated(model: nn.Module) -> nn.Module:
    """The network under a temperature (what pruning and merging change)."""
    return model.inner if isinstance(model, Tempered) else model


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising validation NLL of log(probs) / T (log-probabilities differ from the logits by
    a per-row constant, which softmax ignores), by L-BFGS on log T.

    When every example is classified right, the NLL falls all the way as T goes to 0: no temperature is the
    best, and the fit returned one near 1e-7 that made every answer 100% sure (and the export's parity check
    fail on logits scaled by 1e7). That is refused."""
    if len(labels) and bool((probs.argmax(1) == labels).all()):
        raise UserError(
            f"calibrate: the model classifies all {len(labels)} validation examples correctly, so they say nothing "
            "about its over-confidence (the fit would shrink the temperature towards 0, making every answer 100% "
            "sure); calibrate on a validation split the model makes mistakes on (a larger data.val_fraction)"
        )
    logp = probs.float().clamp_min(1e-12).log()
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(logp / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())
