"""Continual learning for image classifiers: a run that continues another (`continual.from_run`).

The new run starts from the old run's weights with the head grown for new classes (the old rows copied,
so the old classes' logits are unchanged before training), and learns under one strategy:

- finetune: the new data alone (the baseline that forgets);
- replay: the new data plus the old run's rehearsal memory (`memory.safetensors`: uint8 images and class
  names, an equal share per class chosen by herding or at random);
- ewc: loss + lambda * sum_i F_i (w_i - w*_i)^2, F the diagonal Fisher information of the earlier data
  (`fisher.safetensors`, summed over the stages so far; computed from the old run's training data when it
  kept none; w* the old run's weights), as in Avalanche's EWC;
- lwf: loss + alpha * KL(old model's softmax / T || new model's over the old classes / T) on the new data.

Every finished run leaves its memory and Fisher information for the next one.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.data.images import ImageSet
from nnrecipe.engine.checkpoint import load_checkpoint, load_weights, save_checkpoint
from nnrecipe.errors import UserError
from nnrecipe.models import head_parameter_names
from nnrecipe.runs import Run, open_run

MEMORY, FISHER = "memory.safetensors", "fisher.safetensors"


def earlier(recipe) -> Run | None:
    return open_run(recipe.continual.from_run) if recipe.continual.from_run is not None else None


def grown_head(model: nn.Module, old: dict[str, torch.Tensor]) -> None:
    """Load `old` weights into `model`, whose head may have more classes: old rows copied, new rows kept."""
    head = head_parameter_names(model)
    own = model.state_dict()
    state = {}
    for name, tensor in old.items():
        if name not in own:
            raise UserError(f"continual.from_run: the earlier run's weights do not fit this model ({name})")
        if own[name].shape == tensor.shape:
            state[name] = tensor
        elif name in head and own[name].shape[1:] == tensor.shape[1:] and own[name].shape[0] > tensor.shape[0]:
            state[name] = torch.cat([tensor, own[name][tensor.shape[0] :]])
        else:
            raise UserError(
                f"continual.from_run: {name} is {tuple(tensor.shape)} there and {tuple(own[name].shape)} here "
                "(the same model.name is needed)"
            )
    model.load_state_dict(state)


def padded(old: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Per-parameter tensors of an earlier (smaller-headed) model, zero-padded to this model's shapes."""
    out = {}
    for name, p in model.named_parameters():
        t = old.get(name, torch.zeros(0, *p.shape[1:]))
        out[name] = torch.cat([t, torch.zeros(p.shape[0] - t.shape[0], *p.shape[1:])]) if t.shape != p.shape else t
    return out


class ContinualClassifier:
    """Cross-entropy (the image TrainTask) plus the strategy's term: EWC's penalty or LwF's distillation."""

    def __init__(self, base, fisher=None, anchor=None, ewc_lambda=0.0, teacher=None, alpha=1.0, temperature=2.0):
        self.base, self.teacher = base, teacher
        self.fisher, self.anchor, self.ewc_lambda = fisher, anchor, ewc_lambda
        self.alpha, self.temperature = alpha, temperature

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.base.label_smoothing)
        if self.fisher is not None:
            bare = getattr(model, "module", model)  # DDP's wrapper
            penalty = sum((self.fisher[n] * (p - self.anchor[n]).pow(2)).sum() for n, p in bare.named_parameters())
            loss = loss + self.ewc_lambda * penalty
        if self.teacher is not None:
            with torch.no_grad():
                old = self.teacher(x).float()
            t = self.temperature
            new = logits[:, : old.shape[1]].float()
            kd = F.kl_div(F.log_softmax(new / t, 1), F.softmax(old / t, 1), reduction="batchmean")
            loss = loss + self.alpha * kd
        return loss, len(y)

    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        return self.base.evaluate(model, loader)


def continual_task(recipe, base, model: nn.Module, old_model: nn.Module | None, prior: Run | None, device, fisher_of):
    """The TrainTask of a continued run (the plain one for a first run, finetune and replay). `fisher_of()`:
    the earlier run's Fisher information from its own training data, for a run that did not keep one."""
    c = recipe.continual
    if prior is None or c.strategy in ("finetune", "replay"):
        return base
    if c.strategy == "lwf":
        return ContinualClassifier(base, teacher=old_model.eval(), alpha=c.lwf_alpha, temperature=c.lwf_temperature)
    fisher = padded(stored_fisher(prior) or fisher_of(), model)
    anchor = padded(load_weights(prior.best_checkpoint), model)
    fisher, anchor = ({k: v.to(device) for k, v in d.items()} for d in (fisher, anchor))
    return ContinualClassifier(base, fisher=fisher, anchor=anchor, ewc_lambda=c.ewc_lambda)


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


def stored_fisher(run: Run) -> dict[str, torch.Tensor] | None:
    if not (run.dir / FISHER).is_file():
        return None
    tensors, _ = load_checkpoint(run.dir / FISHER)
    return {k.removeprefix("fisher."): v for k, v in tensors.items() if k.startswith("fisher.")}


def save_fisher(run: Run, model: nn.Module, loader, prior: Run | None) -> None:
    """This run's Fisher information added to the earlier runs' (what the next stage's EWC holds)."""
    fisher = fisher_information(model, loader)
    old = stored_fisher(prior) if prior is not None else None
    if old is not None:
        old = padded(old, model)
        fisher = {n: fisher[n] + old[n] for n in fisher}
    save_checkpoint(run.dir / FISHER, {f"fisher.{n}": t for n, t in fisher.items()})


def fisher_information(model: nn.Module, loader) -> dict[str, torch.Tensor]:
    """The diagonal Fisher information of a loader's data (squared minibatch gradients of the
    cross-entropy, averaged over batches, as Avalanche's EWC computes it)."""
    model = copy.deepcopy(model).eval()
    total = {n: torch.zeros_like(p, device="cpu") for n, p in model.named_parameters()}
    batches = 0
    for x, y in loader.batches():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                total[n] += p.grad.detach().float().cpu() ** 2
        batches += 1
    return {n: t / max(1, batches) for n, t in total.items()}


def describe(recipe, prior: Run | None, memory: ImageSet | None) -> str:
    if prior is None:
        return ""
    c = recipe.continual
    extra = {"replay": f" with {len(memory) if memory else 0} replayed examples", "ewc": f" (lambda {c.ewc_lambda:g})"}
    return f"; continues {prior.dir.name} ({c.strategy}{extra.get(c.strategy, '')})"
