"""Adversarial examples in pixel space with Captum (`captum.robust`): FGSM, and PGD from a random start
(Madry et al.: steps of 2.5 epsilon / steps), each inside an L-infinity ball of `epsilon` around images in
[0, 1]. The classifier is seen through `PixelModel`, its normalisation inside, so epsilon means grey levels
whatever the recipe normalises with. Used by `nnrecipe evaluate --attack` and by adversarial training."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

METHODS = ("fgsm", "pgd")


class PixelModel(nn.Module):
    """The classifier seen from pixel space: [0, 1] images in, float logits out (the normalisation inside;
    `normalize` takes 0-255 float pixels, as the families' Normalizer does)."""

    def __init__(self, model: nn.Module, normalize: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model, self.normalize = model, normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x * 255.0)).float()


def adversarial(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, eps: float, steps: int = 10
) -> torch.Tensor:
    """`x` (pixels in [0, 1]) pushed to raise `model`'s loss on labels `y`, within `eps` of `x` and in [0, 1]."""
    import warnings

    from captum.robust import FGSM, PGD

    with warnings.catch_warnings():  # Captum notes, every step, that it made the images require gradients
        warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
        if method == "fgsm":
            return FGSM(model, lower_bound=0.0, upper_bound=1.0).perturb(x, epsilon=eps, target=y).detach()
        pgd = PGD(model, lower_bound=0.0, upper_bound=1.0)
        step = 2.5 * eps / steps
        return pgd.perturb(x, radius=eps, step_size=step, step_num=steps, target=y, random_start=True).detach()
