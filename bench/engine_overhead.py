"""Engine overhead: the same model, data and batch size trained by a plain hand-written PyTorch loop, by
nnrecipe's engine, and by PyTorch Lightning's Trainer (when installed: `pip install -r requirements-bench.txt`).

All three read the same in-memory uint8 CIFAR-shaped tensors in the same seeded order and normalise each
batch the same way, so the only difference is the loop around forward/backward/step. The clock runs
from the start of the last epoch to the end of its last step (set-up and nnrecipe's checkpoint writes
are left out; `bench/RESULTS.md` gives the checkpoint cost separately). Runs alternate
(plain, nnrecipe, lightning, plain, ...) for `--rounds` rounds; the ratio printed is the median of the
ratios within each round, so the drift of a shared machine hits the tools alike. Images/s for each; the ratios are printed last.

    python bench/engine_overhead.py                       # convnet and resnet18, CPU
    python bench/engine_overhead.py --models convnet --images 20000 --rounds 3
    python bench/engine_overhead.py --data ../shared/datasets/cifar10-jpeg/train   # real images
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.data.augment import Normalizer
from nnrecipe.data.loader import TensorLoader
from nnrecipe.engine.config import Optim, Schedule, Train
from nnrecipe.engine.loop import Callback, Trainer, make_accelerator
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.engine.tracking import Tracker
from nnrecipe.models import build_model
from nnrecipe.tasks.image_classification import ImageClassifier

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def make_data(n: int, data: str | None):
    if data:
        from nnrecipe.data.images import read_image_tree

        root = Path(data)
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        part = read_image_tree(root, classes, 3, 32, [])
        return part.images[:n], part.labels[:n]
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(
        0, 10, (n,), generator=g
    )


def fresh_model(name: str, device):
    torch.manual_seed(0)
    return build_model(name, 10, 3, 32).to(device)


def plain_loop(name, images, labels, bs, epochs, device) -> float:
    model = fresh_model(name, device)
    # fused, as the engine's (optim.fused): the bench measures the loop, not torch's two SGD implementations
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=True)
    steps = (len(labels) + bs - 1) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps * epochs)
    norm = Normalizer(MEAN, STD)
    loader = TensorLoader(images, labels, bs, device=device, shuffle=True, prepare=lambda x, s: norm(x))
    for epoch in range(epochs):
        if epoch == epochs - 1:
            _sync(device)
            start = time.perf_counter()
        model.train()
        for x, y in loader.batches(epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    _sync(device)
    return len(labels) / (time.perf_counter() - start)


def nnrecipe_engine(name, images, labels, bs, epochs, device) -> float:
    train = Train(epochs=epochs, batch_size=bs, device="cuda" if device.type == "cuda" else "cpu", precision="fp32")
    acc = make_accelerator(train)
    model = fresh_model(name, acc.device)
    norm = Normalizer(MEAN, STD)
    loader = TensorLoader(images, labels, bs, device=acc.device, shuffle=True, prepare=lambda x, s: norm(x))
    clock = _LastEpochClock(epochs, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            accelerator=acc,
            model=model,
            optimizer=build_optimizer(model, Optim(decay_bias_and_norm=True)),
            task=ImageClassifier(),
            train_loader=loader,
            val_loader=None,
            train_cfg=train,
            schedule_cfg=Schedule(name="onecycle"),
            run_dir=Path(tmp),
            tracker=Tracker(Path(tmp), tensorboard=False),
            progress=False,
            callbacks=[clock],
        )
        trainer.fit()
    return len(labels) / (clock.end - clock.start)


class _LastEpochClock(Callback):
    """Times the last epoch's training steps: set-up and the end-of-run checkpoint are left out, as the
    other tools neither set up the same things nor write checkpoints."""

    def __init__(self, epochs, device):
        self.epochs, self.device, self.start, self.end = epochs, device, None, None

    def on_epoch_start(self, epoch, model):
        if epoch == self.epochs - 1:
            _sync(self.device)
            self.start = time.perf_counter()

    def after_step(self, trainer):
        if self.start is not None:
            _sync(self.device)
            self.end = time.perf_counter()


def lightning_trainer(name, images, labels, bs, epochs, device) -> float | None:
    try:
        import lightning as L
    except ImportError:
        return None
    norm = Normalizer(MEAN, STD)
    loader = TensorLoader(images, labels, bs, device="cpu", shuffle=True)

    class Batches(torch.utils.data.IterableDataset):
        # Whole batches, same order as the others; Lightning moves them to the device.
        def __init__(self):
            self.epoch = 0

        def __iter__(self):
            yield from loader.batches(self.epoch)
            self.epoch += 1

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = fresh_model(name, "cpu")

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.net(norm(x)), y)

        def configure_optimizers(self):
            opt = torch.optim.SGD(
                self.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=True
            )
            steps = len(loader) * epochs
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
            return [opt], [{"scheduler": sched, "interval": "step"}]

    class Clock(L.Callback):
        start = end = None

        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == epochs - 1:
                _sync(device)
                Clock.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if Clock.start is not None:
                _sync(device)
                Clock.end = time.perf_counter()

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    dl = torch.utils.data.DataLoader(Batches(), batch_size=None)
    trainer.fit(Module(), dl)
    return len(labels) / (Clock.end - Clock.start)


def _paired(runs: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a/b, each pair measured back to back."""
    return statistics.median(x / y for x, y in zip(runs[a], runs[b]))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["convnet", "resnet18"])
    ap.add_argument(
        "--images", type=int, default=None, help="images per epoch (default: 20,480 convnet, 1,280 resnet18 on CPU)"
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default=None, help="an ImageFolder tree (e.g. CIFAR-10 JPEGs) instead of random tensors")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"machine: {cpu_model()}, {torch.get_num_threads()} torch threads, "
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}"
    )
    ratios = []
    for name in args.models:
        n = args.images or ((20_480 if name == "convnet" else 1_280) * (20 if device.type == "cuda" else 1))
        images, labels = make_data(n, args.data)
        runs: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for label, fn in (
                ("plain loop", plain_loop),
                ("nnrecipe", nnrecipe_engine),
                ("lightning", lightning_trainer),
            ):
                ips = fn(name, images, labels, args.batch_size, args.epochs, device)
                if ips is not None:
                    runs.setdefault(label, []).append(ips)
        for label, values in runs.items():
            print(
                f"{name:9s} {label:11s} median {statistics.median(values):9,.0f} images/s  rounds: "
                + ", ".join(f"{v:,.0f}" for v in values)
                + f"  ({n:,} images/epoch, last of {args.epochs} epochs, bs {args.batch_size})"
            )
        # Machines drift (shared hosts); a ratio of runs taken back to back within a round holds better.
        line = f"{name}: ratio vs plain loop: {_paired(runs, 'nnrecipe', 'plain loop'):.3f}"
        line += (
            f"   ratio vs lightning: {_paired(runs, 'nnrecipe', 'lightning'):.3f}"
            if "lightning" in runs
            else "   (lightning not installed)"
        )
        ratios.append(line)
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
