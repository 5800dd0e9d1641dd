"""Pruning: the sparsity asked for, permanent zeros, masks held through fine-tuning, a usable run."""

from __future__ import annotations

import json

import torch

from nnrecipe.deploy.prune import apply_pruning, prune_run
from nnrecipe.engine.checkpoint import load_checkpoint, split_prefix
from nnrecipe.models import build_model
from nnrecipe.runs import open_run
from nnrecipe.tasks import get_family

task = get_family("image_classification")


def test_global_magnitude_pruning_removes_the_smallest_weights():
    torch.manual_seed(0)
    model = build_model("convnet", 10, 1, 8)
    before = torch.cat(
        [m.weight.abs().flatten() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    )
    apply_pruning(model, 0.5, structured=False)
    after = torch.cat(
        [m.weight.flatten() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    )
    assert abs(float((after == 0).float().mean()) - 0.5) < 0.01
    kept = before[after != 0]
    assert kept.min() >= before[after == 0].max()  # every kept weight is at least as large as every removed one
    assert not any("weight_orig" in k or "weight_mask" in k for k in model.state_dict())  # permanent


def test_unstructured_pruning_keeps_accuracy_and_gives_a_usable_run(trained_digits_run):
    stats = prune_run(trained_digits_run, 0.5)
    assert abs(stats["sparsity"] - 0.5) < 0.01
    assert stats["after"] >= stats["before"] - 0.03
    pruned = open_run(stats["run"])
    assert json.loads((pruned.dir / "report.json").read_text())["test"]["accuracy"] == stats["after"]
    assert task.evaluate(pruned, split="val")["examples"] == 144
    from nnrecipe.deploy.export import export_run

    assert export_run(pruned, "onnx")["checks"]["max_abs_diff"] < 1e-4


def test_structured_pruning_with_fine_tuning_keeps_channels_removed(trained_digits_run):
    stats = prune_run(trained_digits_run, 0.3, structured=True, finetune_epochs=2)
    pruned = open_run(stats["run"])
    weights = split_prefix(load_checkpoint(pruned.best_checkpoint)[0], "model")
    for key in ("0.weight", "3.weight"):  # the two convolutions: 30% of output channels entirely zero
        per_channel = weights[key].flatten(1).abs().sum(1)
        assert (per_channel == 0).sum() == round(0.3 * len(per_channel))
    assert stats["after"] >= 0.9


def test_a_re_prune_that_fails_keeps_the_previous_result(trained_digits_run, monkeypatch, tmp_path):
    """The previous <run>-pruned<N> was deleted before the new prune had succeeded."""
    import shutil

    import pytest

    import nnrecipe.deploy.prune as prune_module

    run = open_run(shutil.copytree(trained_digits_run.dir, tmp_path / "run"))  # its prunes land beside the copy
    first = prune_run(run, 0.3)
    marker = open_run(first["run"]).meta_path.read_bytes()

    def broken(*args):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(prune_module, "_score", broken)
    with pytest.raises(RuntimeError, match="scoring failed"):
        prune_run(run, 0.3)
    assert open_run(first["run"]).meta_path.read_bytes() == marker  # the earlier result, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-pruned30"]  # nothing left aside
    monkeypatch.undo()
    again = prune_run(run, 0.3)
    assert again["run"] == first["run"] and sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-pruned30"]
    prune_run(run, 0.3, finetune_epochs=1)  # it replaced the plain prune of the same amount
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-pruned30", "run-pruned30-ft1"]
    prune_run(run, 0.304)  # named "pruned30" too: it replaced the run of the prune at 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-pruned30", "run-pruned30-ft1", "run-pruned30.4"]
