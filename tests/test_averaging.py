"""Weight averaging in the engine: SWA against torch's own recipe, last-k against a hand-taken mean, exact
resume through the averaging phase, BatchNorm statistics of the average, and the run's report naming it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.test_engine import blobs, make_trainer, net
from tests.test_resume import InterruptAt
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel

from nnrecipe.data.loader import TensorLoader
from nnrecipe.engine.checkpoint import load_weights, weights_note
from nnrecipe.engine.config import Swa, Train
from nnrecipe.engine.loop import Callback
from nnrecipe.errors import RecipeError
from nnrecipe.tasks import get_family


def bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))


def test_swa_equals_torchs_swa_recipe_by_hand(tmp_path):
    """torch.optim.swa_utils' documented loop: SWALR from the start epoch, average at each epoch's end."""
    cfg = Train(epochs=4, batch_size=32, device="cpu", precision="fp32", swa=Swa(start_epoch=3, lr=0.01))
    trainer = make_trainer(tmp_path, net(), train=cfg)
    result = trainer.fit()
    assert result.weights == "SWA: the average of epochs 3-4 (2 snapshots)"
    assert weights_note(result.best_checkpoint) == result.weights
    assert set(result.averaged) == {"val_loss", "val_accuracy"}

    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, fused=True)  # as the engine
    swa, swalr = AveragedModel(model), None
    x, y = blobs(256)
    loader = TensorLoader(x, y, 32, shuffle=True, seed=0)
    lrs = []
    for epoch in range(4):
        if epoch == 2:
            swalr = SWALR(opt, swa_lr=0.01, anneal_epochs=1, anneal_strategy="cos")
        lrs.append(opt.param_groups[0]["lr"])
        for xb, yb in loader.batches(epoch):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        if epoch >= 2:
            swa.update_parameters(model)
            swalr.step()
    assert lrs == [0.1, 0.1, 0.1, 0.01]  # the rate held during the first averaged epoch, then SWALR's
    saved = load_weights(result.best_checkpoint)
    for name, p in swa.module.named_parameters():
        assert torch.equal(saved[name], p), name
    assert [r["lr"] for r in result.history] == [0.1, 0.1, 0.1, 0.01]


class Snapshots(Callback):
    def __init__(self):
        self.weights = []

    def after_epoch(self, trainer, row):
        self.weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def test_average_last_is_the_mean_of_the_last_k_epochs_with_batchnorm_recomputed(tmp_path):
    seen = Snapshots()
    cfg = Train(epochs=5, batch_size=32, device="cpu", precision="fp32", average_last=3)
    trainer = make_trainer(tmp_path, bn_net(), train=cfg, callbacks=[seen])
    result = trainer.fit()
    assert result.weights.startswith("the mean of the last 3 epochs' weights (epochs 3-5)")
    assert "BatchNorm statistics recomputed" in result.weights
    saved = load_weights(result.best_checkpoint)
    for name, _ in bn_net().named_parameters():
        mean = torch.stack([w[name] for w in seen.weights[2:]]).mean(0)
        torch.testing.assert_close(saved[name], mean, rtol=1e-6, atol=1e-7)
    # The running statistics are the average network's own on the training data, not a mean of the snapshots'.
    snap_mean = torch.stack([w["1.running_mean"] for w in seen.weights[2:]]).mean(0)
    assert not torch.allclose(saved["1.running_mean"], snap_mean, atol=1e-3)
    avg = bn_net()
    avg.load_state_dict(saved)
    x, _ = blobs(256)
    with torch.no_grad():
        hidden = avg[0](x)
    torch.testing.assert_close(saved["1.running_mean"], hidden.mean(0), rtol=1e-4, atol=1e-5)
    # Only the window's snapshots stay on disk; the live weights are what training left.
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*")) == [
        f"epoch-{n}.safetensors" for n in (3, 4, 5)
    ]
    assert torch.equal(trainer.model[0].weight, seen.weights[-1]["0.weight"])


@pytest.mark.parametrize("stop", [(1, 7), (2, 3), (3, 2)], ids=["before", "first-averaged-epoch", "annealed"])
def test_swa_resumes_exactly_wherever_it_was_interrupted(tmp_path, stop):
    cfg = Train(
        epochs=5, batch_size=32, device="cpu", precision="fp32", swa=Swa(start_epoch=3, lr=0.02, anneal_epochs=2)
    )
    straight = make_trainer(tmp_path / "a", bn_net(), train=cfg).fit()
    broken = make_trainer(tmp_path / "b", bn_net(), train=cfg, callbacks=[InterruptAt(*stop)])
    assert broken.fit().status == "interrupted"
    resumed = make_trainer(tmp_path / "b", bn_net(), train=cfg).fit(resume=True)
    assert resumed.status == "finished"
    drop = ("samples_per_s", "epoch_seconds")
    rows = [[{k: v for k, v in r.items() if k not in drop} for r in res.history] for res in (straight, resumed)]
    assert rows[0] == rows[1]
    a, b = load_weights(straight.best_checkpoint), load_weights(resumed.best_checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.averaged == straight.averaged


def test_averaging_choices_are_checked():
    with pytest.raises(ValueError, match="ema and swa both average the weights; choose one"):
        Train(ema=True, swa=Swa())
    with pytest.raises(ValueError, match="swa and average_last"):
        Train(swa=Swa(), average_last=3)


def test_a_start_epoch_after_the_last_is_named(tmp_path):
    from nnrecipe.errors import UserError

    with pytest.raises(UserError, match=r"train.swa.start_epoch: 6 is after the last epoch \(5\)"):
        make_trainer(tmp_path, net(), train=Train(epochs=5, device="cpu", swa=Swa(start_epoch=6)))


def test_an_image_run_with_swa_reports_the_averaged_weights(recipe_factory, new_run):
    """Through the family: the recipe field, the best checkpoint the verbs load, run.json and report.md."""
    recipe = recipe_factory("train.epochs=3", "train.swa.start_epoch=2", "data.limit=600")
    run = new_run(recipe)
    result = get_family("image_classification").train(recipe, run)
    assert result["accuracy"] > 0.5
    report = (run.dir / "report.md").read_text()
    assert "Weights: SWA: the average of epochs 2-3 (2 snapshots)\n" in report  # (this ConvNet has no BatchNorm)
    assert run.report()["test"]["weights"].startswith("SWA")
    assert set(run.meta()["averaged"]) >= {"val_accuracy"}
    # The report scored the averaged weights: evaluating them by hand gives its accuracy.
    assert get_family("image_classification").evaluate(run)["accuracy"] == result["accuracy"]


def test_unknown_averaging_key_is_a_recipe_error(recipe_factory):
    with pytest.raises(RecipeError, match="unknown field 'train.swa.start'.*did you mean 'train.swa.start_epoch'"):
        recipe_factory("train.swa.start=2")
