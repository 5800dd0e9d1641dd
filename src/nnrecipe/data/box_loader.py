"""Batches of boxed images for detection: decoded per batch (a thread two batches ahead), flipped with their
boxes, in a seeded order. Only the annotations are held in memory: a detection set of any size is read
from disk as it trains, the way `data.stream` reads an image folder.

Images keep their own sizes (the detector's transform resizes them). The order of epoch e and the flips
of batch i derive from (seed, e[, i]), so resuming mid-epoch reproduces the rest exactly. An image that
fails to decode is reported once and left out of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from nnrecipe.data.boxes import BoxedImage
from nnrecipe.data.pixels import eight_bit, upright
from nnrecipe.data.splits import epoch_generator, epoch_order
from nnrecipe.data.stream import prefetched
from nnrecipe.engine.loop import console
from nnrecipe.engine.seeding import derived_seed
from nnrecipe.errors import UserError


def read_rgb(path: str) -> torch.Tensor:
    """float32 3 x H x W in [0, 1]; UserError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            return TF.to_dtype(TF.pil_to_tensor(eight_bit(upright(im)).convert("RGB")), torch.float32, scale=True)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path}: {e}") from None


class DetectionLoader:
    """(images, targets) on the device: a list of 3 x H x W float tensors and a list of {"boxes", "labels"}
    with labels shifted by one (0 is the background)."""

    def __init__(
        self,
        items: list[BoxedImage],
        batch_size: int,
        *,
        device,
        shuffle: bool = False,
        seed: int = 0,
        hflip: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.items, self.batch_size, self.device = items, batch_size, torch.device(device)
        self.shuffle, self.seed, self.hflip = shuffle, seed, hflip
        self.rank, self.world_size = rank, world_size
        self._len = math.ceil((len(items) // world_size if world_size > 1 else len(items)) / batch_size)
        self.unreadable: set[str] = set()

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
        """Batch `start` on of epoch `epoch`, each decoded by a thread while the ones before it train; a
        batch whose every image failed to decode is left out."""
        g = epoch_generator(self.seed, epoch) if self.shuffle else None
        order = epoch_order(len(self.items), g, self.rank, self.world_size).tolist()
        for images, targets in prefetched(lambda i: self._batch(order, epoch, i), start, self._len):
            if images:
                yield images, targets

    def _batch(self, order: list[int], epoch: int, i: int) -> tuple[list[torch.Tensor], list[dict]]:
        flips = torch.Generator().manual_seed(derived_seed(self.seed, epoch, i))
        images, targets = [], []
        for j in order[i * self.batch_size : (i + 1) * self.batch_size]:
            item = self.items[j]
            try:
                img = read_rgb(item.path)
            except UserError as e:
                if item.path not in self.unreadable:
                    self.unreadable.add(item.path)
                    console.print(f"[yellow]skipped: {e}[/yellow]")
                continue
            boxes = item.boxes
            if self.hflip and torch.rand((), generator=flips) < 0.5:
                img = TF.horizontal_flip(img)
                canvas = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=img.shape[-2:])
                boxes = TF.horizontal_flip(canvas).as_subclass(torch.Tensor)
            images.append(img.to(self.device))
            targets.append({"boxes": boxes.to(self.device), "labels": (item.labels + 1).to(self.device)})
        return images, targets
