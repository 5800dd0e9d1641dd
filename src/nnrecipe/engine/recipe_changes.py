"""What changed in a run's recipe.yaml since its checkpoint was written.

A resume continues a run exactly as it began: the same batches, schedule and weights. A recipe edited in
between (a smaller batch size after running out of memory, a wider model) ended in a traceback from the LR
scheduler or from loading the weights, or worse, trained on with a different schedule and no word. The
checkpoint keeps the recipe it was trained under; a resume compares the two first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nnrecipe.errors import UserError

IGNORED = ("track", "description")  # where runs go, how they are logged: no part of the training


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe as {dotted field: value}."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def recipe_changes(before: str, after: str, free: tuple[str, ...] = ()) -> list[str]:
    """`field: old -> new` for each training field that differs between two recipe texts, but `free` ones."""
    old, new = flat(yaml.safe_load(before) or {}), flat(yaml.safe_load(after) or {})
    keys = sorted(k for k in old.keys() | new.keys() if k.split(".")[0] not in IGNORED and k not in free)
    return [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys if old.get(k) != new.get(k)]


def refuse_changes(saved: str | None, current: str | None, where: Path, free: str | None = None) -> None:
    """One line naming each changed field, when the recipe a checkpoint was trained under (`saved`; None
    for checkpoints written before it was kept) differs from the run's recipe.yaml now (`current`). `free`:
    the fields the checkpoint says may change, comma-separated (an RL run's total_steps: it trains on)."""
    allowed = tuple(f for f in (free or "").split(",") if f)
    changed = recipe_changes(saved, current, allowed) if saved and current else []
    if changed:
        raise UserError(
            f"{where} changed since the checkpoint: {'; '.join(changed)}. A resume goes on exactly as the run "
            "began (batches, schedule, weights): put the values back, or train a new run"
        )
