"""train.precision auto timed on the run's own step where the CPU's bf16 units do not settle it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nnrecipe.engine import loop, precision_probe
from nnrecipe.engine.config import Train
from nnrecipe.engine.precision_probe import decide, pick
from nnrecipe.runs import Run
from nnrecipe.tasks import get_family


class Task:
    def __init__(self, fail_in_bf16: bool = False):
        self.fail_in_bf16 = fail_in_bf16

    def training_loss(self, model, batch):
        if self.fail_in_bf16 and torch.is_autocast_enabled("cpu"):
            raise RuntimeError('"conv2d" not implemented for BFloat16\nmore lines')
        x, y = batch
        return F.cross_entropy(model(x), y), len(y)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 6 * 6, 4)
    )


@pytest.fixture
def probing(tmp_path, monkeypatch):
    monkeypatch.setenv("NNRECIPE_PRECISION_PROBE", "on")
    monkeypatch.setenv("NNRECIPE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "precision.json"


def test_the_probe_leaves_weights_statistics_and_random_state_untouched_and_is_remembered(probing, monkeypatch):
    model, batch = small_net(), (torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    precision, reason = decide(model, Task(), batch, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)  # dropout in the timed steps drew from a restored RNG
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm stats too
    assert all(p.grad is None for p in model.parameters())
    assert precision in ("fp32", "bf16") and "timed in" in reason
    timings = json.loads(probing.read_text())
    (key, t), = timings.items()  # fmt: skip
    assert "params" in key and "float32[16, 3, 8, 8]" in key and t["fp32"] > 0 and t["bf16"] > 0

    monkeypatch.setattr(precision_probe, "time_precisions", lambda step: pytest.fail("timed twice"))
    again, why = decide(model, Task(), batch, torch.device("cpu"))
    assert again == precision and "timed before" in why
    bigger = (torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,)))  # another workload is timed afresh
    with pytest.raises(pytest.fail.Exception, match="timed twice"):
        decide(model, Task(), bigger, torch.device("cpu"))
    with pytest.raises(pytest.fail.Exception, match="timed twice"):  # so is another memory format
        decide(model.to(memory_format=torch.channels_last), Task(), batch, torch.device("cpu"))


def test_bf16_is_kept_only_when_clearly_faster():
    assert pick(2.0e-3, 1.0e-3, "x")[0] == "bf16"
    assert pick(1.0e-3, 0.95e-3, "x")[0] == "fp32"  # 1.05x is within the noise and bf16's rounding costs
    assert pick(1.0e-3, 2.0e-3, "x")[0] == "fp32"


def test_a_model_without_bf16_kernels_trains_in_fp32_with_the_reason(probing):
    batch = (torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,)))
    precision, reason = decide(small_net(), Task(fail_in_bf16=True), batch, torch.device("cpu"))
    assert precision == "fp32" and "bf16 training step failed" in reason and "not implemented" in reason
    assert not probing.exists()  # nothing remembered: a fixed kernel gets timed next time


def test_auto_on_a_cpu_with_bf16_units_trains_a_convnet_in_the_faster_precision(
    probing, monkeypatch, recipe_factory, new_run
):
    monkeypatch.setattr(loop, "cpu_bf16_units", lambda: "AVX512-BF16")
    monkeypatch.setattr(precision_probe, "time_precisions", lambda step: {"fp32": 2e-3, "bf16": 1e-3})
    recipe = recipe_factory("train.epochs=1")
    run = new_run(recipe)
    get_family("image_classification").train(recipe, run)
    assert Run(run.dir).meta()["precision"] == "bf16"
    assert json.loads(probing.read_text())  # remembered

    # a resumed run keeps the precision it began with, whatever the clock says now
    acc = loop.make_accelerator(Train(precision="auto"))
    assert acc.precision_pending
    monkeypatch.setattr(loop, "decide", lambda *a: pytest.fail("a resume must not re-time"))
    settled = loop.settle_precision(acc, Train(), nn.Linear(2, 2), Task(), None, recorded="fp32")
    assert settled.mixed_precision == "no" and "resume" in settled.precision_reason


def test_without_timing_auto_keeps_fp32(monkeypatch):
    monkeypatch.setattr(loop, "cpu_bf16_units", lambda: "AMX")
    monkeypatch.setenv("NNRECIPE_PRECISION_PROBE", "off")
    acc = loop.make_accelerator(Train(precision="auto"))
    settled = loop.settle_precision(acc, Train(), nn.Linear(2, 2), Task(), None)
    assert settled.mixed_precision == "no" and "NNRECIPE_PRECISION_PROBE=off" in settled.precision_reason
    assert not loop.make_accelerator(Train(precision="auto"), cpu_bf16=True).precision_pending
