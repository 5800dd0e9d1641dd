"""Continual learning for image classifiers: a run that continues another (`continual.from_run`).

The new run starts from the old run's weights with the head grown for new classes (the old rows copied,
so the old classes' logits are unchanged before training), and learns under one strategy:

- finetune: the new data alone (the baseline that forgets);
- replay: the new data plus the old run's rehearsal memory (`memory.safetensors`: uint8 images and class
  names, an equal share per class chosen by herding or at random), joined to the new data once or drawn
  into every batch (`continual.replay_batch`);
- ewc: loss + lambda * sum_i F_i (w_i - w*_i)^2, F the diagonal Fisher information of the earlier data
  (`fisher.safetensors`, summed over the stages so far; computed from the old run's training data when it
  kept none; w* the old run's weights), as in Avalanche's EWC;
- lwf: loss + alpha * KL(old model's softmax / T || new model's over the old classes / T) on the new data.

Every finished run leaves its memory and Fisher information for the next one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.data.images import ImageSet
from nnrecipe.engine.checkpoint import load_checkpoint, save_checkpoint
from nnrecipe.models import head_parameter_names
from nnrecipe.runs import Run
from nnrecipe.tasks.continual_parts import (
    Forward,
    continual_loss,
    grown_state,
)
from nnrecipe.tasks.continual_parts import earlier as continual_earlier

MEMORY = "memory.safetensors"


def earlier(recipe) -> Run | None:
    return continual_earlier(recipe, "image_classification")


def grown_head(model: nn.Module, old: dict[str, torch.Tensor]) -> None:
    """Load `old` weights into `model`, whose head may have more classes: old rows copied, new rows kept."""
    grown_state(model, old, head_parameter_names(model))


IMAGES = Forward(logits=lambda model, batch: model(batch[0]), targets=lambda batch: batch[1])


def continual_task(recipe, base, model: nn.Module, old_model: nn.Module | None, prior: Run | None, device, fisher_of):
    """The TrainTask of a continued run (the plain one for a first run, finetune and replay). `fisher_of()`:
    the earlier run's Fisher information from its own training data, for a run that did not keep one."""
    if prior is None or recipe.continual.strategy in ("finetune", "replay"):
        return base
    adversarial = recipe.train.adversarial is not None
    return continual_loss(recipe.continual, base, IMAGES, model, old_model, prior, device, fisher_of, adversarial)


def read_memory(prior: Run, classes: list[str]) -> ImageSet | None:
    """The earlier run's rehearsal memory, labelled in this run's classes."""
    path = prior.dir / MEMORY
    if not path.is_file():
        return None
    tensors, state = load_checkpoint(path)
    index = torch.tensor([classes.index(c) for c in state["classes"]], dtype=torch.long)
    return ImageSet(tensors["images"], index[tensors["labels"]])


def save_memory(run: Run, model: nn.Module, pipeline, pool: ImageSet, classes: list[str], budget: int, how: str):
    """Keep `budget` examples of `pool` for the next stage, an equal share per class present in it."""
    present = sorted(set(pool.labels.tolist()))
    share = budget // max(1, len(present))
    keep: list[int] = []
    for c in present:
        idx = torch.nonzero(pool.labels == c).flatten()
        if how == "random" or len(idx) <= share:
            order = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(c))]
            keep += order[:share].tolist()
        else:
            keep += idx[herding(features(model, pipeline, pool.images[idx]), share)].tolist()
    kept = pool.subset(keep)
    save_checkpoint(run.dir / MEMORY, {"images": kept.tensor(), "labels": kept.labels}, {"classes": classes})


@torch.no_grad()
def features(model: nn.Module, pipeline, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The inputs of the classifier head (the penultimate features) for uint8 `images`."""
    (head,) = {n.rsplit(".", 1)[0] for n in head_parameter_names(model)}
    module = model.get_submodule(head)
    seen: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda m, args, out: seen.append(args[0].flatten(1).float().cpu()))
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(0, len(images), batch):
            model(pipeline(images[i : i + batch].to(device), 0))
    finally:
        hook.remove()
    return torch.cat(seen)


def herding(feats: torch.Tensor, k: int) -> list[int]:
    """iCaRL's herding: greedily pick the examples whose running mean stays closest to the class mean."""
    feats = F.normalize(feats, dim=1)
    mu = feats.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    for i in range(min(k, len(feats))):
        gaps = ((mu - (total + feats) / (i + 1)) ** 2).sum(1)
        if chosen:
            gaps[chosen] = float("inf")
        best = int(gaps.argmin())
        chosen.append(best)
        total += feats[best]
    return chosen


def describe(recipe, prior: Run | None, memory: ImageSet | None) -> str:
    if prior is None:
        return ""
    c = recipe.continual
    per_batch = f", {c.replay_batch} in every batch" if c.replay_batch else ""
    extra = {
        "replay": f" with {len(memory) if memory else 0} replayed examples{per_batch}",
        "ewc": f" (lambda {c.ewc_lambda:g})",
    }
    return f"; continues {prior.dir.name} ({c.strategy}{extra.get(c.strategy, '')})"
