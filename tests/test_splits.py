"""The one hold-out splitter and the one epoch order every loader uses."""

from __future__ import annotations

from collections import Counter

import torch

from nnrecipe.data.splits import epoch_generator, epoch_order, holdout, shard


def test_holdout_is_stratified_when_every_label_has_two_examples():
    labels = ["a"] * 80 + ["b"] * 20
    kept, held = holdout(100, 0.2, seed=3, labels=labels)
    assert sorted(kept + held) == list(range(100)) and len(held) == 20
    assert Counter(labels[i] for i in held) == {"a": 16, "b": 4}  # the class ratio survives the split
    assert holdout(100, 0.2, seed=3, labels=labels) == (kept, held)  # fixed by the split seed alone
    assert holdout(100, 0.2, seed=4, labels=labels)[1] != held


def test_holdout_falls_back_to_a_seeded_permutation_and_holds_at_least_one():
    kept, held = holdout(10, 0.2, seed=0, labels=["x"] * 9 + ["lonely"])  # one label too rare to stratify
    assert len(held) == 2 and sorted(kept + held) == list(range(10))
    assert len(holdout(5, 0.01, seed=0)[1]) == 1
    assert holdout(5, 0.0, seed=0) == ([0, 1, 2, 3, 4], [])


def test_epoch_order_depends_on_seed_and_epoch_only_and_shards_equally():
    a = epoch_order(10, epoch_generator(7, 2))
    assert torch.equal(a, epoch_order(10, epoch_generator(7, 2))) and not torch.equal(
        a, epoch_order(10, epoch_generator(7, 3))
    )
    assert torch.equal(epoch_order(4, None), torch.arange(4))
    parts = [epoch_order(10, epoch_generator(7, 2), rank, 3) for rank in range(3)]
    assert all(len(p) == 3 for p in parts) and len(set(torch.cat(parts).tolist())) == 9  # disjoint, equal counts
    assert shard(list(range(7)), 1, 2) == [1, 3, 5] and shard([1, 2], 0, 1) == [1, 2]
