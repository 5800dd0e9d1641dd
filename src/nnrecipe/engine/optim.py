"""Optimisers and LR schedules, built from torch.optim; the only logic here is how parameters are grouped.

Groups: weight decay off for biases and normalisation weights (unless asked), and an optional LR scale
for the backbone (transfer learning). A schedule multiplies every group's own LR, so scales survive it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import lr_scheduler

from nnrecipe.engine.config import Optim, Schedule


def build_optimizer(
    model: nn.Module,
    cfg: Optim,
    backbone: set[str] = frozenset(),
    backbone_lr_scale: float = 1.0,
    no_decay: set[str] = frozenset(),
) -> torch.optim.Optimizer:
    """`backbone`: names of parameters trained at `backbone_lr_scale` x lr (frozen ones included: they
    join in when unfrozen, since the optimiser skips parameters without gradients). `no_decay`: more
    parameters kept out of weight decay besides biases and norms (a language model's embeddings)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        skip = name in no_decay or (not cfg.decay_bias_and_norm and p.ndim <= 1)  # biases and norm scales are 1-D
        groups.setdefault((name in backbone, skip), []).append(p)
    param_groups = [
        {
            "params": ps,
            "lr": cfg.lr * (backbone_lr_scale if is_backbone else 1.0),
            "weight_decay": 0.0 if undecayed else cfg.weight_decay,
        }
        for (is_backbone, undecayed), ps in sorted(groups.items())
    ]
    fused = cfg.fused and fused_ok(model)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            fused=fused,
        )
    adam = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return adam(param_groups, lr=cfg.lr, betas=cfg.betas, fused=fused)


def fused_ok(model: nn.Module) -> bool:
    """torch's fused SGD and Adam kernels exist for floating-point parameters on CPU, CUDA and a few others."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return all(
        p.is_floating_point() and p.device.type in _get_fused_kernels_supported_devices() for p in model.parameters()
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Schedule, steps_per_epoch: int, total_steps: int
) -> lr_scheduler.LRScheduler:
    """A scheduler stepped once per optimiser step, over `total_steps`. constant/step/linear/cosine are one
    LambdaLR (linear warmup in front); onecycle is torch's OneCycleLR, whose rising phase is the warmup when
    warmup_epochs > 0."""
    total = max(1, total_steps)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if cfg.name == "onecycle" and total >= 4:  # OneCycleLR needs at least a step per phase
        max_lr = [g["lr"] for g in optimizer.param_groups]
        pct = min(0.9, max(warmup / total if warmup else cfg.pct_start, 2 / total))
        return lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct)
    return lr_scheduler.LambdaLR(optimizer, _factor(cfg, steps_per_epoch, warmup, total))


def _factor(cfg: Schedule, steps_per_epoch: int, warmup: int, total: int):
    # A plain function (not an object) so LambdaLR keeps it out of its state_dict.
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        step -= warmup
        if cfg.name == "step":
            return cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
        progress = min(step, total - warmup) / max(1, total - warmup)
        if cfg.name == "linear":
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - progress)
        if cfg.name == "cosine":
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor
