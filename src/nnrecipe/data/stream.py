"""Image folders bigger than memory (`data.stream`): the files stay on disk and are decoded batch by batch in
DataLoader worker processes, with the same decoding (`read_image` + `conform`) as the in-memory path, so a
streamed run sees exactly the images, in exactly the order, that the in-memory run of the recipe sees.

`StreamedImages` stands where the in-memory path has an N x C x H x W uint8 tensor: it has a shape, a
length, subsets that stay on disk, and decodes what is indexed. The epoch loader (data/loader.py) hands it
the epoch's order and the first batch to make; batch i is decoded from the order alone, so a mid-epoch resume
starts at batch k without reading the k batches before it.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from nnrecipe.errors import UserError

T = TypeVar("T")
# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec's; the pinned 0.29.1 has them,
# and TorchCodec (which needs FFmpeg's libraries) is not a dependency: the warning would only repeat per batch
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)
READ_THREADS = 8  # decoding in the main process (evaluation subsets, statistics): I/O-bound threads


def auto_workers() -> int:
    """`data.workers: auto`: on up to 4 cores, 0 (decoding inside the training process: measured on 2 cores,
    CIFAR-10 JPEGs, 0.82x the in-memory samples/s against 0.62x with one DataLoader process, which takes a
    core from the model's threads); above, a quarter of the cores as DataLoader processes, leaving the rest
    to compute."""
    cores = os.cpu_count() or 2
    return 0 if cores <= 4 else cores // 4


class Files:
    """The default source of a streamed set's bytes: its items are file paths."""

    def read(self, item: str) -> bytes:
        try:
            with open(item, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise UserError(f"image not found: {item}") from None
        except OSError as e:
            raise UserError(f"cannot read image {item}: {e}") from None

    def name(self, item: str) -> str:
        return item

    def same_set(self, other) -> bool:
        return isinstance(other, Files)


FILES = Files()


class StreamedImages:
    """Images on disk, decoded on use to uint8 C x H x W at `channels` and a square `size`. `paths` are the
    items `source` opens: file paths (the default), or sample numbers of a packed set (data/shards.py)."""

    def __init__(self, paths: list, channels: int, size: int, source=FILES):
        self.paths, self.channels, self.size, self.source = list(paths), channels, size, source

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx) -> StreamedImages:
        return StreamedImages([self.paths[i] for i in torch.as_tensor(idx, dtype=torch.long).tolist()], *self._at)

    def concat(self, other: StreamedImages) -> StreamedImages:
        if not self.source.same_set(other.source):
            raise UserError("streamed images from two different sources cannot be joined; set data.stream: false")
        return StreamedImages(self.paths + other.paths, *self._at)

    def conformed(self, channels: int | None, size: int) -> StreamedImages:
        return StreamedImages(self.paths, channels or self.channels, size, self.source)

    @property
    def _at(self) -> tuple:
        return self.channels, self.size, self.source

    def decode_one(self, path) -> torch.Tensor:
        return self._decode(self.source.read(path), path)

    def _decode(self, data: bytes, path) -> torch.Tensor:
        """PIL's decode (read_image) and the resize; a file that is not an image is named."""
        from nnrecipe.data.images import conform, read_image

        image = read_image(io.BytesIO(data), self.channels, self.source.name(path))
        return conform(image.unsqueeze(0), self.channels, self.size)[0]

    def decode_batch(self, paths: list, unreadable: list[int] | None = None) -> torch.Tensor:
        """Several files into one N x C x H x W uint8 tensor, the same values as stacking `decode_one`'s. JPEGs
        are decoded by libjpeg-turbo in one call (`jpegs_decoded`); other files at the size are converted by
        PIL straight into one array (3x faster than one tensor per file); the rest go through `decode_one`'s
        resize. A file that is not an image raises, naming it; or, given `unreadable`, its position is added
        there and its row left zero."""
        from nnrecipe.data.images import conform

        mode = "L" if self.channels == 1 else "RGB"
        out = np.zeros((len(paths), self.size, self.size, self.channels), dtype=np.uint8)
        blobs = []
        for path in paths:
            try:
                blobs.append(self.source.read(path))
            except UserError:
                if unreadable is None:
                    raise
                blobs.append(b"")
        jpegs = jpegs_decoded(blobs, self.channels)
        for j, (path, data) in enumerate(zip(paths, blobs)):
            image = jpegs.get(j)
            if image is not None:
                if image.shape[-2:] != (self.size, self.size):
                    image = conform(image.unsqueeze(0), self.channels, self.size)[0]
                out[j] = image.permute(1, 2, 0).numpy()
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.seek(0)  # animated formats: first frame, as read_image
                    if im.size == (self.size, self.size):
                        out[j] = np.asarray(im.convert(mode), dtype=np.uint8).reshape(self.size, self.size, -1)
                        continue
            except Exception:  # _decode reports it, naming the file
                pass
            try:
                out[j] = self._decode(data, path).permute(1, 2, 0).numpy()
            except UserError:
                if unreadable is None:
                    raise
                unreadable.append(j)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def decode(self, idx) -> torch.Tensor:
        """The images at `idx` (a list, range or index tensor), decoded now, N x C x H x W uint8."""
        paths = [self.paths[i] for i in torch.as_tensor(idx, dtype=torch.long).reshape(-1).tolist()]
        if not paths:
            return torch.empty((0, self.channels, self.size, self.size), dtype=torch.uint8)
        step = -(-len(paths) // READ_THREADS)
        chunks = [paths[i : i + step] for i in range(0, len(paths), step)]
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            return torch.cat(list(pool.map(self.decode_batch, chunks)))

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = range(len(self))[idx]
        return self.decode(idx)

    def split(self, chunk: int) -> Iterator[torch.Tensor]:
        """Decoded chunks in order (what `channel_stats` iterates), one chunk in memory at a time."""
        for start in range(0, len(self), chunk):
            yield self.decode(range(start, min(start + chunk, len(self))))


def jpegs_decoded(blobs: list[bytes], channels: int) -> dict[int, torch.Tensor]:
    """The JPEGs among `blobs` decoded in one torchvision.io.decode_jpeg call, as C x H x W uint8 at `channels`,
    by position. PIL decodes JPEGs with libjpeg-turbo too, to the same pixels (checked on CIFAR-10 and in
    tests/test_stream.py), but spends most of a 32x32 image's 118 us in Python holding the GIL; this call
    took 32 us an image. Grey JPEGs wanted in RGB are repeated, as PIL's convert does; what PIL converts by a
    formula of its own (colour to grey, CMYK) is left to PIL, as is a batch the call rejects (not returned)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    idx = [j for j, data in enumerate(blobs) if data[:3] == b"\xff\xd8\xff"]
    if not idx:
        return {}
    try:
        decoded = decode_jpeg(
            [torch.frombuffer(bytearray(blobs[j]), dtype=torch.uint8) for j in idx], mode=ImageReadMode.UNCHANGED
        )
    except RuntimeError:  # one corrupt file fails the call: PIL then names it
        return {}
    out = {}
    for j, image in zip(idx, decoded):
        if image.shape[0] == channels:
            out[j] = image
        elif image.shape[0] == 1 and channels == 3:
            out[j] = image.expand(3, -1, -1)
    return out


def prefetched(make: Callable[[int], T], start: int, stop: int, ahead: int = 2) -> Iterator[T]:
    """make(start), ..., make(stop - 1), each made by a thread while the ones before it train: worth it where
    the making waits on I/O or releases the GIL (reading files, tokenising, PIL), or the model computes on a
    GPU; torchvision's JPEG decoder holds the GIL (two threads decode no faster than one)."""
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        pending = [pool.submit(make, i) for i in range(start, min(stop, start + ahead))]
        for i in range(start, stop):
            x = pending.pop(0).result()
            if i + ahead < stop:
                pending.append(pool.submit(make, i + ahead))
            yield x


def readable(paths: list[Path]) -> list[bool]:
    """Which files open as images (their header; nothing is decoded): a streamed set lists the unreadable
    ones as skipped up front, as the in-memory path does after decoding everything."""

    def check(path: Path) -> bool:
        try:
            with Image.open(path) as im:
                return im.width > 0 and im.height > 0
        except Exception:  # any decoder's complaint: not usable
            return False

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        return list(pool.map(check, paths, chunksize=256))


class _EpochBatches(torch.utils.data.Dataset):
    """Item i: batch i of one epoch's order, decoded (in a worker process)."""

    def __init__(self, images: StreamedImages, order: torch.Tensor, batch_size: int):
        self.images, self.order, self.batch_size = images, order, batch_size

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, i: int) -> torch.Tensor:
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size].tolist()
        return self.images.decode_batch([self.images.paths[j] for j in idx])


def stream_batches(
    images: StreamedImages, order: torch.Tensor, batch_size: int, start: int, stop: int, workers: int, pin: bool
) -> Iterator[torch.Tensor]:
    """Batches start..stop-1 of an epoch's `order`, decoded ahead by `workers` DataLoader processes, or with 0
    in this process (no start-up and no copy between processes): by two threads ahead when the model
    computes on a GPU (`pin`), in the training thread itself when it computes on the CPU. There the
    threads would take cores from the model's own: on 2 cores, CIFAR-10 JPEGs, 2,689 samples/s decoded in
    the training thread against 2,069 with two threads ahead and 2,250 with one."""
    batches = _EpochBatches(images, order, batch_size)
    if workers == 0 and not pin:
        for i in range(start, stop):
            yield batches[i]
        return
    if workers == 0:
        yield from prefetched(batches.__getitem__, start, stop)
        return
    loader = torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        sampler=range(start, stop),
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=2 if workers else None,
    )
    try:
        yield from loader
    except UserError:
        raise
    except Exception as e:  # a worker's error arrives wrapped with its traceback: keep its last line
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise UserError(f"streamed image data: {lines[-1] if lines else type(e).__name__}") from None
