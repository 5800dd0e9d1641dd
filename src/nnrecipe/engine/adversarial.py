"""Adversarial examples. Images, in pixel space with Captum (`captum.robust`): FGSM, and PGD from a random
start (Madry et al.: steps of 2.5 epsilon / steps), each inside an L-infinity ball of `epsilon` around images
in [0, 1]; the classifier is seen through `PixelModel`, its normalisation inside, so epsilon means grey
levels whatever the recipe normalises with (`nnrecipe evaluate --attack`, adversarial training). Text, in the
token embeddings (`EmbeddingAdversarial`): FGM and PGD as used to fine-tune BERT-style encoders; no attack
library works on embeddings of a Hugging Face model's own forward, so these few lines are ours."""

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


class EmbeddingAdversarial:
    """`train.adversarial` for text models (an engine TrainTask around the family's): each batch's token
    embeddings are pushed along the loss gradient inside an L2 ball of radius `epsilon` per example (FGM,
    Miyato et al., 2017: one step of length epsilon; PGD: `steps` steps of 2.5 epsilon / steps, projected back,
    as in Madry et al. and the BERT fine-tuning recipes that use it), padding left alone, and the model is
    trained on the attacked batch beside the clean one (half the loss each) or alone. The embedding weights
    get gradients from both passes. Works for any model that takes `inputs_embeds` (Hugging Face encoders,
    peft-wrapped or not, and the from-scratch models)."""

    def __init__(self, inner, cfg):
        self.inner, self.cfg = inner, cfg

    def __getattr__(self, name: str):  # evaluate() and anything else: the family's task
        return getattr(self.inner, name)

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        bare = getattr(model, "module", model)  # DDP's wrapper syncs gradients: attack the network itself
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        embedded = bare.get_input_embeddings()(batch["input_ids"])
        delta = self.attack(bare, embedded.detach(), rest)
        attacked = model(inputs_embeds=embedded + delta, **rest).loss
        if not self.cfg.clean:
            return attacked, len(batch["labels"])
        clean = model(inputs_embeds=embedded, **rest).loss
        return (clean + attacked) / 2, len(batch["labels"])

    def attack(self, model: nn.Module, embedded: torch.Tensor, rest: dict) -> torch.Tensor:
        eps, steps = self.cfg.epsilon, (1 if self.cfg.method == "fgm" else self.cfg.steps)
        size = eps if self.cfg.method == "fgm" else 2.5 * eps / steps
        real = rest["attention_mask"][..., None].to(embedded.dtype) if "attention_mask" in rest else 1.0
        delta = torch.zeros_like(embedded)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = model(inputs_embeds=embedded + delta, **rest).loss
            (grad,) = torch.autograd.grad(loss, delta)
            grad = grad * real
            delta = delta.detach() + size * grad / per_example_norm(grad)
            delta = delta * (eps / per_example_norm(delta)).clamp(max=1.0)  # back into the ball
        return delta.detach()


def per_example_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each example's slice (batch first), broadcastable against `x`, never zero."""
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))


def embedding_attack_accuracy(model: nn.Module, loader, cfg) -> float:
    """Accuracy of a sequence classifier on `loader`'s batches with each example's embeddings attacked as
    `cfg` says (an `Adversarial` section: fgm or pgd, epsilon, steps); the model in eval mode, its weights
    left as they were (bench/ and tests measure what adversarial training of text buys with it)."""
    attack = EmbeddingAdversarial(None, cfg)
    was = model.training
    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    right = total = 0
    try:
        for batch in loader.batches():
            rest = {k: v for k, v in batch.items() if k != "input_ids"}
            embedded = model.get_input_embeddings()(batch["input_ids"])
            delta = attack.attack(model, embedded, rest)
            with torch.no_grad():
                logits = model(inputs_embeds=embedded + delta, attention_mask=batch.get("attention_mask")).logits
            right += int((logits.argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was)
    return right / max(1, total)
