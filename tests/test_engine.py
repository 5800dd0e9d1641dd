"""The shared loop against oracles: a hand-written PyTorch loop, closed-form schedules, injected faults."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnrecipe.data.loader import TensorLoader
from nnrecipe.engine.config import EarlyStopping, Optim, Schedule, Train
from nnrecipe.engine.loop import Callback, Diverged, Trainer, make_accelerator
from nnrecipe.engine.optim import build_optimizer, build_scheduler
from nnrecipe.engine.tracking import Tracker


def blobs(n=256, d=8, classes=3, seed=0):
    centers = torch.randn(classes, d, generator=torch.Generator().manual_seed(0)) * 3
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


class Toy:
    def training_loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y), len(y)

    def evaluate(self, model, loader):
        model.eval()
        correct = total = 0
        loss = 0.0
        with torch.no_grad():
            for x, y in loader.batches():
                out = model(x)
                loss += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
                total += len(y)
        return {"loss": loss / total, "accuracy": correct / total}


def net(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))


def make_trainer(tmp_path, model, *, train=None, optim=None, schedule=None, callbacks=(), n=256, data=None):
    """A Trainer on the Toy task; `data` = (x, y, x_val, y_val), the blobs by default."""
    train = train or Train(epochs=3, batch_size=32, device="cpu")
    optim = optim or Optim(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    schedule = schedule or Schedule(name="constant")
    x, y, xv, yv = data if data is not None else (*blobs(n), *blobs(128, seed=1))
    acc = make_accelerator(train)
    return Trainer(
        accelerator=acc,
        model=model,
        optimizer=build_optimizer(model, optim),
        task=Toy(),
        train_loader=TensorLoader(x, y, train.batch_size, shuffle=True, seed=train.seed),
        val_loader=TensorLoader(xv, yv, 64),
        train_cfg=train,
        schedule_cfg=schedule,
        run_dir=tmp_path,
        tracker=Tracker(tmp_path, tensorboard=False),
        callbacks=list(callbacks),
        progress=False,
    )


def test_engine_matches_a_hand_written_loop_exactly(tmp_path):
    trainer = make_trainer(
        tmp_path, net(), train=Train(epochs=2, batch_size=32, device="cpu", clip_grad_norm=1.0, precision="fp32")
    )
    trainer.fit()

    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, fused=True)  # as the engine
    x, y = blobs(256)
    loader = TensorLoader(x, y, 32, shuffle=True, seed=0)
    for epoch in range(2):
        for xb, yb in loader.batches(epoch):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    for a, b in zip(trainer.eval_model().parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_norm_clipping_folded_into_fused_adamw_matches_a_hand_written_loop(tmp_path):
    """The engine passes 1/clip coefficient to the fused AdamW kernel instead of rescaling the gradients in
    memory; the weights must follow clip_grad_norm_ + step to rounding, with clipping active."""
    clip = 0.05
    optim = Optim(name="adamw", lr=0.01, weight_decay=0.01, fused=True)
    trainer = make_trainer(
        tmp_path, net(), train=Train(epochs=2, batch_size=32, device="cpu", clip_grad_norm=clip, precision="fp32"),
        optim=optim,
    )  # fmt: skip
    assert trainer.clip_in_step
    trainer.fit()

    model = net()
    opt = build_optimizer(model, optim)
    x, y = blobs(256)
    loader = TensorLoader(x, y, 32, shuffle=True, seed=0)
    norms = []
    for epoch in range(2):
        for xb, yb in loader.batches(epoch):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
            opt.step()
    assert sum(n > clip for n in norms) > len(norms) // 2  # clipping changed most steps
    for a, b in zip(trainer.eval_model().parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    unclipped = net()
    opt = build_optimizer(unclipped, optim)
    for epoch in range(2):
        for xb, yb in loader.batches(epoch):
            opt.zero_grad()
            F.cross_entropy(unclipped(xb), yb).backward()
            opt.step()
    assert not torch.allclose(next(unclipped.parameters()), next(model.parameters()), rtol=1e-3)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    big = make_trainer(tmp_path / "a", net(), train=Train(epochs=1, batch_size=64, device="cpu", precision="fp32"))
    big.fit()
    small = make_trainer(
        tmp_path / "b", net(), train=Train(epochs=1, batch_size=32, grad_accum_steps=2, device="cpu", precision="fp32")
    )
    # Same examples per optimiser step needs the same order: give both the 64-example permutation.
    small.train_loader.batches = lambda epoch, start=0: (
        (xb[i : i + 32], yb[i : i + 32]) for xb, yb in big.train_loader.batches(epoch, start // 2) for i in (0, 32)
    )
    small.fit()
    assert small.state.global_step == big.state.global_step == 4
    for a, b in zip(small.eval_model().parameters(), big.eval_model().parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_model_learns_and_logs_every_epoch(tmp_path):
    trainer = make_trainer(tmp_path, net())
    result = trainer.fit()
    assert result.status == "finished"
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_accuracy"] > 0.9
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()


@pytest.mark.parametrize("name", ["constant", "step", "linear", "cosine", "onecycle"])
def test_schedules_follow_their_formulas(name):
    model = net()
    cfg = Schedule(name=name, warmup_epochs=1, step_epochs=2, gamma=0.5, min_lr_ratio=0.1)
    opt = build_optimizer(model, Optim(name="sgd", lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0))
    sched = build_scheduler(opt, cfg, steps_per_epoch=10, total_steps=60)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if name == "onecycle":  # warmup_epochs sets the rising phase (OneCycleLR peaks at its last step)
        assert max(lrs) == pytest.approx(1.0, abs=1e-6) and lrs.index(max(lrs)) == 9
        assert lrs[-1] < 1e-3
        return
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)  # linear warmup
    assert lrs[10] == pytest.approx(1.0)
    if name == "constant":
        assert lrs[10:] == [pytest.approx(1.0)] * 50
    if name == "step":
        assert lrs[29] == pytest.approx(1.0) and lrs[30] == pytest.approx(0.5) and lrs[50] == pytest.approx(0.25)
    if name == "linear":
        assert lrs[35] == pytest.approx(0.1 + 0.9 * (1 - 25 / 50)) and lrs[-1] == pytest.approx(
            0.1 + 0.9 * (1 - 49 / 50)
        )
    if name == "cosine":
        assert lrs[35] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 25 / 50)))
        assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 49 / 50)))


def test_weight_decay_skips_biases_and_backbone_gets_its_scale():
    model = net()
    backbone = {"0.weight", "0.bias"}
    opt = build_optimizer(model, Optim(name="adamw", lr=0.01, weight_decay=0.1), backbone, backbone_lr_scale=0.1)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["0.weight"])]["lr"] == pytest.approx(0.001)
    assert by_param[id(named["0.weight"])]["weight_decay"] == 0.1
    assert by_param[id(named["0.bias"])]["weight_decay"] == 0.0
    assert by_param[id(named["3.weight"])]["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_takes_the_fused_kernel_and_makes_the_same_update_as_torchs_loop(momentum):
    """On CPU torch's SGD default is a Python loop over the tensors (ResNet-18: 41 ms a step here, fused
    6.7 ms); the fused kernel must be taken and make the same update to rounding (vectorised, it can round
    the last few elements of a tensor one ulp apart) without touching the gradients."""
    model, reference = net(), net()
    cfg = Optim(name="sgd", lr=0.1, momentum=momentum, nesterov=True, weight_decay=5e-4, decay_bias_and_norm=True)
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"]
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=momentum, nesterov=momentum > 0, weight_decay=5e-4)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        plain.step()
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
            assert torch.equal(p.grad, q.grad)


class _PoisonAtEpoch(Callback):
    """Makes the weights NaN during the given epoch (a stand-in for a diverging run)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, epoch, model):
        if epoch == self.epoch:
            with torch.no_grad():
                model[0].weight.fill_(float("nan"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, net(), callbacks=[_PoisonAtEpoch(1)])
    with pytest.raises(Diverged, match=r"NaN/inf at epoch 2.*last good checkpoint kept"):
        trainer.fit()
    from nnrecipe.engine.checkpoint import load_checkpoint

    tensors, state = load_checkpoint(trainer.last_path)
    assert state["fit"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_early_stopping_stops_after_patience(tmp_path):
    train = Train(
        epochs=50,
        batch_size=32,
        device="cpu",
        early_stopping=EarlyStopping(metric="val_loss", patience=2, min_delta=10.0),
    )
    trainer = make_trainer(tmp_path, net(), train=train)
    result = trainer.fit()
    # min_delta 10 means nothing after the first epoch counts as an improvement.
    assert result.status == "early_stopped" and len(result.history) == 3


def test_ema_weights_are_evaluated_and_saved(tmp_path):
    trainer = make_trainer(tmp_path, net(), train=Train(epochs=2, batch_size=32, device="cpu", ema=True, ema_decay=0.9))
    trainer.fit()
    ema, live = trainer.eval_model(), trainer.model
    assert not torch.equal(ema[0].weight, live[0].weight)
    from nnrecipe.engine.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(trainer.best_path)
    assert any(k.startswith("ema.module.") for k in tensors)


def test_same_seed_gives_identical_runs(tmp_path):
    runs = []
    for i in range(2):
        trainer = make_trainer(tmp_path / str(i), net(dropout=0.3))
        runs.append([(r["train_loss"], r["val_loss"]) for r in trainer.fit().history])
    assert runs[0] == runs[1]


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from nnrecipe.errors import UserError

    with pytest.raises(UserError, match="no CUDA device"):
        make_accelerator(Train(device="cuda"))
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        make_accelerator(Train(precision="fp16"))


def test_a_monitor_metric_that_is_not_logged_is_named(tmp_path):
    from nnrecipe.errors import UserError

    trainer = make_trainer(tmp_path, net(), train=Train(epochs=1, batch_size=32, device="cpu", monitor="val_acc"))
    with pytest.raises(UserError, match="train.monitor: 'val_acc' is not logged; logged: .*val_accuracy"):
        trainer.fit()


def test_auto_precision_is_bf16_on_cpu_for_matmul_heavy_tasks_with_native_bf16_and_timed_for_others(monkeypatch):
    import nnrecipe.engine.loop as loop

    monkeypatch.setattr(loop.torch.cuda, "is_available", lambda: False)
    cases = [  # (AMX, AVX512-BF16, matmul-heavy task) -> precision, words of the printed reason
        (True, True, True, "bf16", "with AMX"),
        (False, True, True, "bf16", "with AVX512-BF16"),  # AMD Zen 4: the HF Trainer ran 1.43x faster in bf16
        (False, False, True, "no", "no native bf16 units"),
        (True, True, None, "no", "is timed"),  # other models: fp32 until settle_precision has timed both
        (True, True, False, "no", "keeps fp32"),  # a family that knows bf16 costs it accuracy (detection)
    ]
    for amx, avx512_bf16, heavy, expected, why in cases:
        monkeypatch.setattr(loop.torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(loop.torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        acc = loop.make_accelerator(Train(precision="auto"), cpu_bf16=heavy)
        assert acc.mixed_precision == expected and why in loop.describe(acc), loop.describe(acc)
    assert loop.make_accelerator(Train(precision="fp32"), cpu_bf16=True).mixed_precision == "no"
    # bf16 asked for on a CPU that emulates it: kept, and said to be slow (a MiniLM step took 25x as long)
    monkeypatch.setattr(loop.torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(loop.torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    acc = loop.make_accelerator(Train(precision="bf16"), cpu_bf16=True)
    assert acc.mixed_precision == "bf16" and "bf16 is emulated: many times slower" in loop.describe(acc)
    monkeypatch.setattr(loop.torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert loop.describe(loop.make_accelerator(Train(precision="bf16"))).endswith("(train.precision)")
