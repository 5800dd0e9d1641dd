"""What every classifier family's continual learning shares, whatever its inputs: a head grown for new
classes with the old rows copied, the per-parameter tensors of an earlier (smaller-headed) model padded to
the new shapes, the diagonal Fisher information of a data set, and the training loss with EWC's penalty or
LwF's distillation added.

A family supplies how a batch becomes logits and targets (`Forward`): images are (x, y) pairs, texts are
tokenised dicts with their labels inside.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.engine.checkpoint import load_checkpoint, load_weights, save_checkpoint
from nnrecipe.errors import UserError
from nnrecipe.runs import Run, open_run
from nnrecipe.tasks.family import Stages

FISHER = "fisher.safetensors"


@dataclass(frozen=True)
class Forward:
    """logits(model, batch) and targets(batch) of one family's batches (targets: class ids, -100 ignored)."""

    logits: Callable[[nn.Module, Any], torch.Tensor]
    targets: Callable[[Any], torch.Tensor]


def grown_state(model: nn.Module, old: dict[str, torch.Tensor], head: set[str] | None = None) -> None:
    """Load `old` weights into `model`, whose head may have more classes: old rows copied, new rows kept.
    `head`: the names allowed to grow (None: any tensor whose first dimension grew and nothing else)."""
    own = model.state_dict()
    state = {}
    for name, tensor in old.items():
        if name not in own:
            raise UserError(f"continual.from_run: the earlier run's weights do not fit this model ({name})")
        mine = own[name]
        grows = mine.ndim > 0 and mine.shape[1:] == tensor.shape[1:] and mine.shape[0] > tensor.shape[0]
        if mine.shape == tensor.shape:
            state[name] = tensor
        elif grows and (head is None or name in head):
            state[name] = torch.cat([tensor.to(mine.dtype), mine[tensor.shape[0] :]])
        else:
            raise UserError(
                f"continual.from_run: {name} is {tuple(tensor.shape)} there and {tuple(mine.shape)} here "
                "(the same model is needed)"
            )
    model.load_state_dict(state)


def padded(old: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Per-parameter tensors of an earlier (smaller-headed) model, zero-padded to this model's shapes."""
    out = {}
    for name, p in model.named_parameters():
        t = old.get(name, torch.zeros(0, *p.shape[1:]))
        out[name] = torch.cat([t, torch.zeros(p.shape[0] - t.shape[0], *p.shape[1:])]) if t.shape != p.shape else t
    return out


def fisher_information(model: nn.Module, loader, forward: Forward) -> dict[str, torch.Tensor]:
    """The diagonal Fisher information of a loader's data (squared minibatch gradients of the
    cross-entropy, averaged over batches, as Avalanche's EWC computes it)."""
    model = copy.deepcopy(model).eval()
    total = {n: torch.zeros_like(p, device="cpu") for n, p in model.named_parameters() if p.requires_grad}
    batches = 0
    for batch in loader.batches():
        model.zero_grad(set_to_none=True)
        logits = forward.logits(model, batch)
        F.cross_entropy(logits.flatten(0, -2), forward.targets(batch).flatten()).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                total[n] += p.grad.detach().float().cpu() ** 2
        batches += 1
    return {n: t / max(1, batches) for n, t in total.items()}


class ContinualLoss:
    """A family's cross-entropy plus the strategy's term: EWC's penalty or LwF's distillation (over the old
    classes' logits, at a temperature; positions whose target is ignored are left out)."""

    def __init__(
        self, base, forward: Forward, fisher=None, anchor=None, ewc_lambda=0.0, teacher=None, alpha=1.0,
        temperature=2.0,
    ):  # fmt: skip
        self.base, self.forward, self.teacher = base, forward, teacher
        self.fisher, self.anchor, self.ewc_lambda = fisher, anchor, ewc_lambda
        self.alpha, self.temperature = alpha, temperature

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        if self.teacher is None:  # EWC: the family's own loss (label smoothing, adversarial...) plus the penalty
            loss, n = self.base.training_loss(model, batch)
        else:  # LwF: one forward for both terms
            logits, y = self.forward.logits(model, batch), self.forward.targets(batch)
            smoothing = getattr(self.base, "label_smoothing", 0.0)
            loss, n = F.cross_entropy(logits.flatten(0, -2), y.flatten(), label_smoothing=smoothing), len(y)
            with torch.no_grad():
                old = self.forward.logits(self.teacher, batch).float()
            t, keep = self.temperature, (y != -100).flatten()
            new = logits[..., : old.shape[-1]].float().flatten(0, -2)[keep]
            old = old.flatten(0, -2)[keep]
            kd = F.kl_div(F.log_softmax(new / t, 1), F.softmax(old / t, 1), reduction="batchmean")
            loss = loss + self.alpha * kd
        if self.fisher is not None:
            bare = getattr(model, "module", model)  # DDP's wrapper
            penalty = sum(
                (self.fisher[n] * (p - self.anchor[n]).pow(2)).sum()
                for n, p in bare.named_parameters()
                if n in self.fisher
            )
            loss = loss + self.ewc_lambda * penalty
        return loss, n

    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        return self.base.evaluate(model, loader)


def continual_loss(c, base, forward: Forward, model, old_model, prior, device, fisher_of, adversarial: bool):
    """The TrainTask of a continued run under strategy `c.strategy` (the plain `base` for a first run,
    finetune and replay). `fisher_of()`: the earlier run's Fisher information computed now, for a run that
    kept none."""
    if prior is None or c.strategy in ("finetune", "replay"):
        return base
    if c.strategy == "lwf":
        if adversarial:
            raise UserError("continual.strategy: lwf computes its own loss; train.adversarial goes with finetune, "
                            "replay or ewc")  # fmt: skip
        return ContinualLoss(base, forward, teacher=old_model.eval(), alpha=c.lwf_alpha, temperature=c.lwf_temperature)
    fisher = padded(stored_fisher(prior) or fisher_of(), model)
    anchor = padded(load_weights(prior.best_checkpoint), model)
    fisher, anchor = ({k: v.to(device) for k, v in d.items()} for d in (fisher, anchor))
    return ContinualLoss(base, forward, fisher=fisher, anchor=anchor, ewc_lambda=c.ewc_lambda)


def earlier(recipe, family: str) -> Run | None:
    """The run a recipe continues (None for a first run); one of another family is a one-line error."""
    if recipe.continual.from_run is None:
        return None
    prior = open_run(recipe.continual.from_run)
    task = prior.recipe().task
    if task != family:
        raise UserError(f"continual.from_run: {prior.dir} is a run of {task}; this recipe is {family}")
    return prior


def stored_fisher(run: Run) -> dict[str, torch.Tensor] | None:
    if not (run.dir / FISHER).is_file():
        return None
    tensors, _ = load_checkpoint(run.dir / FISHER)
    return {k.removeprefix("fisher."): v for k, v in tensors.items() if k.startswith("fisher.")}


def save_fisher(run: Run, model: nn.Module, loader, prior: Run | None, forward: Forward) -> None:
    """This run's Fisher information added to the earlier runs' (what the next stage's EWC holds)."""
    fisher = fisher_information(model, loader, forward)
    old = stored_fisher(prior) if prior is not None else None
    if old is not None:
        old = padded(old, model)
        fisher = {n: fisher[n] + old[n] for n in fisher}
    save_checkpoint(run.dir / FISHER, {f"fisher.{n}": t for n, t in fisher.items()})


def balanced_memory(keys: list[str], budget: int, seed: int = 0) -> list[int]:
    """Indices of `budget` examples, an equal share per key (class) present, drawn at random (seeded)."""
    present = sorted(set(keys))
    share = budget // max(1, len(present))
    keep: list[int] = []
    for k, c in enumerate(present):
        idx = torch.tensor([i for i, key in enumerate(keys) if key == c])
        keep += idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed + k))][:share].tolist()
    return keep


def class_stages(recipe) -> Stages | None:
    """Class-incremental stages: copies of the recipe, each keeping one stage's classes (data.classes)."""
    stages = recipe.continual.stages
    if stages is None:
        return None
    out = []
    for classes in stages:
        stage = recipe.model_copy(deep=True)
        stage.data.classes, stage.continual.stages = list(classes), None
        out.append(stage)
    return Stages(out, [f"{i + 1}: {','.join(c)}" for i, c in enumerate(stages)], recipe.continual.strategy)
