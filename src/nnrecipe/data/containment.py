"""Texts that contain one another: SST-2's training file holds a sentence and dozens of its sub-phrases, so a
random row split puts pieces of one sentence on both sides and validation flatters the model.

Containment is on words after lower-casing and joining whitespace: text A contains text B when B's words
are a contiguous run of A's. Every text is indexed by its normalised form; each text's runs of words are
looked up in that index (a text of n words has n(n+1)/2 runs, so texts are capped at MAX_WORDS words for
the search: longer ones are matched on their first MAX_WORDS). Groups are the connected pieces of the
containment relation (union-find); a grouped split keeps each group on one side (scikit-learn's
StratifiedGroupKFold, one fold held out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_WORDS = 64


def normal(text: str) -> tuple[str, ...]:
    return tuple(text.lower().split())


def runs(words: tuple[str, ...]) -> set[tuple[str, ...]]:
    """Every contiguous run of words (the whole text included)."""
    words = words[:MAX_WORDS]
    return {words[i:j] for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def containment_groups(texts: Sequence[str]) -> list[int]:
    """A group number per text: texts linked by containment (directly or through others) share one."""
    forms = [normal(t) for t in texts]
    first: dict[tuple[str, ...], int] = {}
    for i, f in enumerate(forms):
        first.setdefault(f, i)
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, f in enumerate(forms):
        for run in runs(f):
            j = first.get(run)
            if j is not None:
                a, b = root(i), root(j)
                if a != b:
                    parent[a] = b
    # Named by each group's first text: the roots themselves depend on the order the unions ran in, which
    # follows set iteration, which follows string hashing, which Python seeds per process; group numbers
    # that changed between processes made a different split from the same split_seed.
    name: dict[int, int] = {}
    return [name.setdefault(root(i), i) for i in range(len(texts))]


def contained_across(held: Sequence[str], kept: Sequence[str]) -> list[int]:
    """Indices of `held` texts that contain, or are contained in, some `kept` text (the leak a split check
    reports)."""
    kept_forms = {normal(t) for t in kept}
    held_forms = [normal(t) for t in held]
    held_index: dict[tuple[str, ...], list[int]] = {}
    for i, f in enumerate(held_forms):
        held_index.setdefault(f, []).append(i)
    hit = {i for i, f in enumerate(held_forms) if any(run in kept_forms for run in runs(f))}
    for f in kept_forms:  # a held text inside a kept one
        for run in runs(f):
            hit.update(held_index.get(run, ()))
    return sorted(hit)


def grouped_holdout(groups: Sequence[int], fraction: float, seed: int, labels: Sequence) -> tuple[list[int], list[int]]:
    """(kept, held) sorted indices, about `fraction` held out, no group on both sides, labels stratified as
    far as the groups allow. Of the 1/fraction folds the one nearest the asked size is held out (a fold that
    took a giant group, such as every sentence holding the word "good", stays in training)."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = min(max(2, round(1 / fraction)), len(set(groups)))
    y = np.asarray([str(x) for x in labels])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    target = fraction * len(y)
    kept, held = min(splitter.split(np.zeros(len(y)), y, groups=np.asarray(groups)),
                     key=lambda fold: abs(len(fold[1]) - target))  # fmt: skip
    return sorted(kept.tolist()), sorted(held.tolist())
