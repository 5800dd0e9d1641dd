"""Weight averaging: stochastic weight averaging (torch.optim.swa_utils) and the mean of the last k epochs.

Either gives a run one set of weights, the average, which the run's best checkpoint then holds and every
verb (evaluate, predict, export, serve) uses. The average of BatchNorm statistics is not the statistics of
the averaged weights, so BatchNorm nets get theirs recomputed by one forward pass over the training data
(torch's `update_bn`, the batches run through the task's own forward).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from nnrecipe.engine.checkpoint import load_weights, save_checkpoint, split_prefix, with_prefix
from nnrecipe.engine.config import Train
from nnrecipe.engine.distributed import is_main_process
from nnrecipe.errors import UserError


class Averaging:
    """What the loop asks of a weight average; `epoch` is 0-based throughout."""

    def __init__(self, start: int, epochs: int):
        self.start = start  # first epoch (0-based) whose weights go into the average
        if start >= epochs:
            raise UserError(self.too_late(start, epochs))

    def too_late(self, start: int, epochs: int) -> str:
        return f"averaging starts at epoch {start + 1}, after the last epoch ({epochs})"

    def steps_schedule(self, epoch: int) -> bool:
        """Whether the recipe's schedule drives the learning rate during `epoch`."""
        return True

    def epoch_started(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Before the first batch of `epoch` (also when a resumed run re-enters it)."""

    def epoch_ended(self, model: nn.Module, epoch: int, run_dir: Path) -> None:
        """After the last optimiser step of `epoch`, before its validation."""

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], state: dict, epoch: int):
        """Back to where a checkpoint left off; `epoch`: the epoch the resumed run continues."""

    def averaged(self, model: nn.Module, run_dir: Path) -> tuple[nn.Module, str] | None:
        """The averaged model and what it is, in words; None when nothing was averaged yet."""


class Swa(Averaging):
    """SWA: from the start epoch on the learning rate anneals to a constant (SWALR, stepped once per epoch)
    and the weights are added to an equal-weight running average at the end of every epoch."""

    def __init__(self, cfg: Train, model: nn.Module, epochs: int):
        s = cfg.swa
        super().__init__((s.start_epoch or int(0.75 * epochs) + 1) - 1, epochs)
        self.cfg = s
        self.model = AveragedModel(model)  # parameters only: BatchNorm statistics are recomputed at the end
        self.scheduler: SWALR | None = None

    def too_late(self, start: int, epochs: int) -> str:
        return f"train.swa.start_epoch: {start + 1} is after the last epoch ({epochs})"

    def steps_schedule(self, epoch: int) -> bool:
        return epoch < self.start

    def epoch_started(self, optimizer, epoch: int) -> None:
        if epoch >= self.start and self.scheduler is None:
            lr = self.cfg.lr or optimizer.param_groups[0]["lr"]  # null: hold the rate the schedule reached
            self.scheduler = SWALR(optimizer, lr, self.cfg.anneal_epochs, self.cfg.anneal_strategy)

    def epoch_ended(self, model: nn.Module, epoch: int, run_dir: Path) -> None:
        if epoch >= self.start:
            self.model.update_parameters(model)
            self.scheduler.step()

    def tensors(self) -> dict[str, torch.Tensor]:
        return with_prefix(self.model.state_dict(), "swa")

    def state(self) -> dict[str, Any]:
        return {"swa_scheduler": self.scheduler.state_dict()} if self.scheduler is not None else {}

    def restore(self, optimizer, tensors, state, epoch: int) -> None:
        self.model.load_state_dict(split_prefix(tensors, "swa"))
        if "swa_scheduler" in state:
            lrs = [g["lr"] for g in optimizer.param_groups]  # building SWALR steps it once; keep the saved rates
            self.scheduler = SWALR(optimizer, self.cfg.lr or lrs[0], self.cfg.anneal_epochs, self.cfg.anneal_strategy)
            self.scheduler.load_state_dict(state["swa_scheduler"])
            for g, lr in zip(optimizer.param_groups, lrs):
                g["lr"] = lr

    def averaged(self, model: nn.Module, run_dir: Path) -> tuple[nn.Module, str] | None:
        n = int(self.model.n_averaged)
        if n == 0:
            return None
        last = self.start + n
        return self.model.module, f"SWA: the average of epochs {self.start + 1}-{last} ({n} snapshots)"


class LastEpochs(Averaging):
    """The mean of the last k epochs' weights, each epoch's kept in checkpoints/epoch-N.safetensors until it
    falls out of the window (so a resumed or early-stopped run averages the same files)."""

    def __init__(self, k: int, epochs: int):
        super().__init__(0, epochs)
        self.k = k

    def epoch_ended(self, model: nn.Module, epoch: int, run_dir: Path) -> None:
        if not is_main_process():
            return
        folder = run_dir / "checkpoints"
        save_checkpoint(folder / f"epoch-{epoch + 1}.safetensors", with_prefix(model.state_dict(), "model"))
        (folder / f"epoch-{epoch + 1 - self.k}.safetensors").unlink(missing_ok=True)

    def averaged(self, model: nn.Module, run_dir: Path) -> tuple[nn.Module, str] | None:
        files = sorted((run_dir / "checkpoints").glob("epoch-*.safetensors"), key=lambda p: int(p.stem[6:]))[-self.k :]
        if not files:
            return None
        snapshots = [load_weights(f) for f in files]
        mean = {}
        for key, last in snapshots[-1].items():
            if last.is_floating_point():
                mean[key] = torch.stack([s[key].float() for s in snapshots]).mean(0).to(last.dtype)
            else:  # counters (BatchNorm's num_batches_tracked): the last epoch's
                mean[key] = last
        model = copy.deepcopy(model)  # the live weights stay what training left (the last checkpoint holds them)
        device = next(model.parameters()).device
        model.load_state_dict({k: v.to(device) for k, v in mean.items()})
        first, last_epoch = (int(f.stem[6:]) for f in (files[0], files[-1]))
        return model, f"the mean of the last {len(files)} epochs' weights (epochs {first}-{last_epoch})"


def weight_averaging(cfg: Train, model: nn.Module, epochs: int) -> Averaging | None:
    """The average a recipe asks for, or None."""
    if cfg.swa is not None:
        return Swa(cfg, model, epochs)
    if cfg.average_last is not None:
        return LastEpochs(cfg.average_last, epochs)
    return None


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class TaskForward(nn.Module):
    """A model whose forward is the task's training forward on a whole batch: what `update_bn` can call
    whatever a batch holds (update_bn itself calls model(batch[0]))."""

    def __init__(self, model: nn.Module, task: Any):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: Any) -> torch.Tensor:
        return self.task.training_loss(self.model, batch)[0]


def recompute_batchnorm(model: nn.Module, task: Any, batches) -> None:
    """BatchNorm running statistics of `model` from one pass over `batches` (no effect without BatchNorm)."""
    if has_batchnorm(model):
        update_bn(([b] for b in batches), TaskForward(model, task))
