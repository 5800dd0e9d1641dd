"""Initialise a model from a local weights file: safetensors, a torch state dict (weights_only) or a run.

Tensors whose name and shape match are loaded; the rest (typically the classifier head, sized for a
different class count) keep their fresh initialisation. Nothing is unpickled.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from nnrecipe.errors import UserError, first_line


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if path.is_dir():  # a run directory: its best checkpoint
        path = path / "checkpoints" / "best.safetensors"
    if not path.is_file():
        raise UserError(f"model.init_from: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        # torch's refusal is a page about weights_only and how to turn it off (never, for a file from elsewhere)
        why = "not tensors alone, or damaged" if "Weights only load failed" in str(e) else first_line(e)
        raise UserError(f"model.init_from: cannot read weights from {path} ({why})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.init_from: {path} does not hold a state dict of tensors")
    if any(k.startswith("model.") for k in state):  # an nnrecipe checkpoint
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return state


def load_matching(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights"
) -> tuple[list[str], list[str]]:
    """Load tensors whose name and shape match; return (loaded, reinitialised) names."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(
            f"model.init_from: no tensor in {source} matches this model "
            f"(first names there: {', '.join(list(state)[:3])}; here: {', '.join(list(own)[:3])})"
        )
    model.load_state_dict(usable, strict=False)
    return sorted(usable), sorted(set(own) - set(usable))
