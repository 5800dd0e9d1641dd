"""An epoch loader over in-memory tensors (or streamed image files): seeded order, batches moved to the
device and prepared there.

The order of epoch e is a permutation drawn from (seed, e) and batch i's augmentation from
(seed, e, i), so skipping the first k batches of an epoch (resume after Ctrl-C) reproduces the rest of
it exactly without replaying anything. With several processes each takes every world-th example. Streamed
images (data/stream.py) are decoded by DataLoader workers from the same order, batch by batch.

`rehearsal` (inputs, labels, k) appends k examples drawn at random from a second, small set to every batch
(experience replay's memory batch), drawn from (seed, epoch, batch, rank) too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from nnrecipe.data.splits import epoch_generator, epoch_order
from nnrecipe.data.stream import StreamedImages, stream_batches
from nnrecipe.engine.seeding import derived_seed


class TensorLoader:
    def __init__(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        seed: int = 0,
        prepare: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,  # streamed images: DataLoader worker processes decoding ahead
        rehearsal: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    ):
        self.inputs, self.labels = inputs, labels
        self.batch_size, self.device, self.shuffle, self.seed = batch_size, torch.device(device), shuffle, seed
        self.prepare = prepare
        self.rank, self.world_size = rank, world_size
        self.workers = workers
        self.rehearsal = rehearsal if rehearsal is not None and rehearsal[2] > 0 and len(rehearsal[1]) else None
        per_rank = len(labels) // world_size if world_size > 1 else len(labels)
        n_batches = math.ceil(per_rank / batch_size)
        # A final batch of one example breaks BatchNorm in training; drop it there.
        if shuffle and n_batches > 1 and per_rank % batch_size == 1:
            n_batches -= 1
        self._len, self._per_rank = n_batches, per_rank

    def __len__(self) -> int:
        return self._len

    @property
    def num_examples(self) -> int:
        return self._per_rank

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = epoch_generator(self.seed, epoch) if self.shuffle else None
        order = epoch_order(len(self.labels), g, self.rank, self.world_size)
        pin = self.device.type == "cuda"
        streamed = (
            stream_batches(self.inputs, order, self.batch_size, start, self._len, self.workers, pin)
            if isinstance(self.inputs, StreamedImages)
            else None
        )
        for i in range(start, self._len):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = next(streamed) if streamed is not None else self.inputs[idx]
            y = self.labels[idx]
            if self.rehearsal is not None:
                x, y = self._with_rehearsal(x, y, derived_seed(self.seed, epoch, i, self.rank, 1))
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.prepare is not None:
                x = self.prepare(x, derived_seed(self.seed, epoch, i))
            yield x, y

    def _with_rehearsal(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels, k = self.rehearsal
        pick = torch.randint(len(labels), (k,), generator=torch.Generator().manual_seed(seed))
        return torch.cat([x, inputs[pick]]), torch.cat([y, labels[pick]])
