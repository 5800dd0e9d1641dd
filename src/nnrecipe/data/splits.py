"""How every family splits data and orders it: one seeded hold-out splitter, one seeded epoch order.

`holdout` keeps split membership fixed by `split_seed` alone (independent of the training seed), and
stratifies by label where every label has at least two examples. `epoch_order` is the permutation of
epoch e drawn from (seed, e), cut into equal per-process shares: skipping the first k batches of an
epoch (resume after Ctrl-C) reproduces the rest of it exactly without replaying anything.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from nnrecipe.engine.seeding import derived_seed


def holdout(n: int, fraction: float, seed: int, labels: Sequence | None = None) -> tuple[list[int], list[int]]:
    """(kept, held) sorted indices of n examples, round(fraction * n) of them held out (at least one):
    stratified by label (scikit-learn) where every label has two examples or more and each side can hold
    every label, else a seeded permutation.
    Kept for the next call with the same arguments (continual stages split one tree again and again)."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    key = None if labels is None else tuple(int(x) if hasattr(x, "item") else x for x in labels)
    kept, held = _holdout(n, fraction, seed, key)
    return list(kept), list(held)


@lru_cache(maxsize=16)
def _holdout(n: int, fraction: float, seed: int, labels: tuple | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    counts = Counter(labels) if labels is not None else None
    n_held = math.ceil(fraction * n)  # as scikit-learn counts a float test_size
    if counts and min(counts.values()) >= 2 and min(n_held, n - n_held) >= len(counts):
        from sklearn.model_selection import train_test_split

        kept, held = train_test_split(np.arange(n), test_size=fraction, random_state=seed, stratify=list(labels))
        return tuple(sorted(kept.tolist())), tuple(sorted(held.tolist()))
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, round(fraction * n))
    return tuple(sorted(order[n_held:].tolist())), tuple(sorted(order[:n_held].tolist()))


def spread_sample(n: int, k: int, seed: int = 0) -> list[int]:
    """k of n indices drawn at random (seeded), in order: what a check on "up to k examples" of a split
    reads. A split's first k are no sample: an ImageFolder split is sorted by class, so its first 1,000
    images can be two classes of ten."""
    if k >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, k, replace=False).tolist())


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random stream of one epoch, from (seed, epoch) alone."""
    return torch.Generator().manual_seed(derived_seed(seed, epoch))


def epoch_order(n: int, generator: torch.Generator | None, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This process's example order for one epoch: a permutation drawn from `generator` (None: 0..n-1),
    every world_size-th example of it from `rank`, all processes getting the same count."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if world_size > 1:
        order = order[rank::world_size][: n // world_size]
    return order


def shard(items: list, rank: int, world_size: int) -> list:
    """Deal items out to processes in turn, every process the same number (the remainder is dropped)."""
    if world_size <= 1:
        return items
    return items[: len(items) // world_size * world_size][rank::world_size]
