"""Detection training: nnrecipe vs a plain PyTorch loop in torchvision's reference style, side by side.

Both train the same Faster R-CNN (`tiny` backbone, same initial weights) on the generated shapes set with
the same optimiser, schedule, clipping, batch size and epochs; the plain loop uses a torch DataLoader
(PIL decoding, transforms.v2 flips on tv_tensors, the usual tuple collate) and no validation between
epochs, nnrecipe runs its whole engine (validation mAP every epoch, checkpoints, metrics). Printed:
training images/s, wall time, and the final validation mAP of each, scored by the same function.

    python bench/detection_vs_plain.py [--epochs 8] [--workers 0]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.data.box_loader import DetectionLoader
from nnrecipe.recipe import load_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import detection, get_family

ROOT = Path(__file__).resolve().parents[1]


class ShapesDataset(Dataset):
    def __init__(self, items, train: bool):
        self.items = items
        self.transform = v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)] + ([v2.RandomHorizontalFlip()] if train else [])
        )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        with Image.open(item.path) as im:
            img = im.convert("RGB")
        boxes = tv_tensors.BoundingBoxes(item.boxes, format="XYXY", canvas_size=(item.height, item.width))
        img, boxes = self.transform(img, boxes)
        return img, {"boxes": boxes.as_subclass(torch.Tensor), "labels": item.labels + 1}


def plain_run(recipe, splits, epochs: int, workers: int) -> dict:
    torch.manual_seed(recipe.train.seed)
    spec = detection.detection_spec(recipe, splits.classes)
    model = spec.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay)
    loader = DataLoader(
        ShapesDataset(splits.train, True),
        batch_size=recipe.train.batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=lambda b: tuple(zip(*b)),
    )
    total, warmup = epochs * len(loader), int(recipe.schedule.warmup_epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for images, targets in loader:
            loss = sum(model(list(images), list(targets)).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, recipe.train.clip_grad_norm)
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    val = DetectionLoader(splits.val, recipe.train.eval_batch_size, device="cpu")
    return {"seconds": seconds, "map": float(detection.run_map(model, val)[0]["map"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0, help="plain loop's DataLoader workers (this machine has 2 cores)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(
            ROOT / "recipes/shapes-detection.yaml",
            [f"train.epochs={args.epochs}", f"track.runs_dir={tmp}", "track.progress=false", "track.tensorboard=false"],
        )
        splits = detection.detection_splits(recipe)  # generates the set once, before either clock starts
        images = len(splits.train) * args.epochs
        start = time.perf_counter()
        result = get_family("detection").train(recipe, create_run(recipe, "bench"))
        ours = {
            "seconds": time.perf_counter() - start,
            "map": result["map"],
            "train_seconds": sum(h.get("epoch_seconds", 0) for h in result["history"]),
        }
    plain = plain_run(recipe, splits, args.epochs, args.workers)
    print(
        f"\nshapes, tiny Faster R-CNN, {args.epochs} epochs, {len(splits.train)} train images, batch {recipe.train.batch_size}, "
        f"{torch.get_num_threads()} threads; CPU: {cpu_model()}"
    )
    print(
        f"nnrecipe: training {ours['train_seconds']:.1f} s ({images / ours['train_seconds']:.1f} images/s); whole command "
        f"with per-epoch validation and the report {ours['seconds']:.1f} s; val mAP {ours['map']:.3f}"
    )
    print(
        f"plain loop (DataLoader workers {args.workers}): training {plain['seconds']:.1f} s "
        f"({images / plain['seconds']:.1f} images/s); val mAP {plain['map']:.3f}"
    )
    print(
        f"training throughput ratio nnrecipe / plain: {plain['seconds'] / ours['train_seconds']:.2f}x; "
        f"whole nnrecipe command vs plain training alone: {plain['seconds'] / ours['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
