"""What the generic checks need from a task: a way to build a fresh model, batches, a loss, an optimiser.

A task family provides one `Subject`; the checks in checks.py never look at images or text directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Budget:
    """Optimiser steps each training check takes. A small network is cheap at the defaults; a pre-trained
    transformer costs ~100x per step and reaches the same verdicts in fewer (its features are already there)."""

    baseline: int = 60  # check 4, per model (real and zeroed inputs)
    overfit: int = 150  # check 5
    lr_range: int = 100  # check 7
    gradients: int = 10  # check 8
    determinism: int = 8  # check 9, per repetition


# Text classification and NER on a pre-trained encoder. On the toy sets of tests/test_doctor.py (MiniLM, batch
# 16) every verdict is the defaults' and the checks took 45 s instead of 75 s (before check 4's Adam was fused);
# one batch's loss still falls to 0.3% (text) and 0.3% (NER) of its first value in 60 steps.
PRETRAINED_BUDGET = Budget(baseline=25, overfit=60, lr_range=60)


@dataclass
class Subject:
    make_model: Callable[[], nn.Module]  # fresh, seeded initialisation
    make_optimizer: Callable[[nn.Module, float], torch.optim.Optimizer]  # the recipe's optimiser at a given LR
    loss: Callable[[nn.Module, Any], torch.Tensor]  # mean loss of a batch
    logits: Callable[[nn.Module, Any], torch.Tensor]  # the model's outputs for a batch, one row per example
    train_batches: Callable[[int], list[Any]]  # first n augmented training batches, seeded
    val_batches: list[Any]  # evaluation batches, fixed
    zero_inputs: Callable[[Any], Any]  # the same batch with its inputs zeroed
    inputs: Callable[[Any], torch.Tensor]  # the input tensor of a batch (for gradients)
    with_inputs: Callable[[Any, torch.Tensor], Any]  # the batch with its inputs replaced
    accuracy: Callable[[nn.Module, list[Any]], float]  # accuracy over batches
    class_prior: torch.Tensor  # training label frequencies
    recipe_lr: float
    safe_lr: float = 1e-3  # Adam LR for checks 4, 8, 9 (judge data, not LR)
    # For inputs that cannot carry gradients (token ids): (leaf tensor, forward from it to the outputs).
    leaf_inputs: Callable[[nn.Module, Any], tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]] | None = None
    budget: Budget = Budget()
