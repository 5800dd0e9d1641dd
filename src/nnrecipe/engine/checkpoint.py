"""Checkpoints as single safetensors files, written atomically, loaded without unpickling anything.

Tensors (weights, optimiser moments, RNG states) are stored as safetensors; everything else (scheduler
state, counters, random.getstate()) goes into the file's metadata as JSON. Nested containers are encoded
so that int dict keys and tuples survive the round trip exactly (optimizer.state_dict() needs both).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nnrecipe.errors import UserError

_META_KEY = "nnrecipe.state"


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], state: Any = None) -> None:
    """Write `tensors` plus JSON-able `state` (which may itself contain tensors) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {k: v.detach() for k, v in tensors.items()}
    skeleton = _encode(state, out, "state")
    out = _own_storage(out)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(out, str(tmp), metadata={_META_KEY: json.dumps(skeleton)})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], Any]:
    """Return (tensors, state). Raises UserError naming the file if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
        skeleton = json.loads(meta.get(_META_KEY, "null"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(
            f"checkpoint {path} is corrupt or unreadable ({e}); earlier checkpoints are untouched"
        ) from None
    return tensors, _decode(skeleton, tensors)


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The sub-dict of keys starting with `prefix.`, with the prefix removed."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A trained model's weights from a run checkpoint: the EMA copy when the run kept one, else the model."""
    tensors, _ = load_checkpoint(path, device)
    return split_prefix(tensors, "ema.module") or split_prefix(tensors, "model")


def weights_note(path: Path) -> str | None:
    """What a checkpoint's weights are, in words ("the best epoch, 7 (val_accuracy 0.91)", "SWA: ...");
    None for a missing file or one written before notes were kept."""
    return state_text(path, "weights")


def state_text(path: Path, key: str) -> str | None:
    """A text entry of a checkpoint's state, read from its metadata alone (no tensor is loaded); None for a
    missing or unreadable file, or one without that entry."""
    try:
        with safe_open(str(path), framework="pt") as f:
            skeleton = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    pairs = skeleton.get("__dict__", []) if isinstance(skeleton, dict) else []
    return next((v for k, v in pairs if k == key and isinstance(v, str)), None)


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _own_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights, views); copy only those.
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in tensors.items():
        v = v.to("cpu").contiguous()
        key = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())
        if key in seen or v.untyped_storage().nbytes() != v.numel() * v.element_size():
            v = v.clone()
        seen.add(key)
        out[k] = v
    return out


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, np.ndarray):  # comes back as a tensor; np.asarray() turns it back
        obj = torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [_encode(k, tensors, f"{path}.k{i}"), _encode(v, tensors, f"{path}.{i}")]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    return obj
