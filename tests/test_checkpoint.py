"""Checkpoints: exact round trips without pickle, atomic replacement, clear errors on corrupt files."""

from __future__ import annotations

import pytest
import torch

from nnrecipe.engine import checkpoint as ckpt
from nnrecipe.engine.checkpoint import load_checkpoint, save_checkpoint
from nnrecipe.engine.seeding import rng_state, set_rng_state
from nnrecipe.errors import UserError


def _trained_adam():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    return model, opt


def test_optimizer_state_round_trips_exactly(tmp_path):
    model, opt = _trained_adam()
    save_checkpoint(tmp_path / "c.safetensors", model.state_dict(), {"optimizer": opt.state_dict(), "n": 3})
    tensors, state = load_checkpoint(tmp_path / "c.safetensors")
    original = opt.state_dict()
    restored = state["optimizer"]
    assert restored["param_groups"] == original["param_groups"]  # int keys and the betas tuple survive
    assert set(restored["state"]) == {0, 1}
    for k in (0, 1):
        for name, value in original["state"][k].items():
            assert torch.equal(restored["state"][k][name], value)
    assert state["n"] == 3 and torch.equal(tensors["weight"], model.weight)


def test_rng_state_round_trip_reproduces_draws(tmp_path):
    import random

    import numpy as np

    save_checkpoint(tmp_path / "r.safetensors", {}, {"rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    _, state = load_checkpoint(tmp_path / "r.safetensors")
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"epoch": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"w": torch.zeros(3)}, {"epoch": 2})
    tensors, state = load_checkpoint(path)
    assert state == {"epoch": 1} and torch.equal(tensors["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"], "no temp file left behind"


def test_corrupt_checkpoint_is_reported_by_path(tmp_path):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match=r"last.safetensors is corrupt"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_tied_weights_are_saved(tmp_path):
    emb = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    sd = {"emb.weight": emb.weight, "head.weight": head.weight}
    save_checkpoint(tmp_path / "t.safetensors", sd)
    tensors, _ = load_checkpoint(tmp_path / "t.safetensors")
    assert torch.equal(tensors["emb.weight"], tensors["head.weight"])
