"""Image folders bigger than memory (`data.stream`): the files stay on disk and are decoded batch by batch (in
the training process on small machines, else in DataLoader worker processes) by `decode_batch`, the decoder
the in-memory path loads its tensor with, so a streamed run sees exactly the images, in exactly the order,
that the in-memory run of the recipe sees.

`StreamedImages` stands where the in-memory path has an N x C x H x W uint8 tensor: it has a shape, a
length, subsets that stay on disk, and decodes what is indexed. The epoch loader (data/loader.py) hands it
the epoch's order and the first batch to make; batch i is decoded from the order alone, so a mid-epoch resume
starts at batch k without reading the k batches before it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import simplejpeg
import torch
from PIL import Image

from nnrecipe.data.pixels import jpeg_turned, pixels
from nnrecipe.errors import UserError

T = TypeVar("T")
READ_THREADS = 8  # decoding in the main process (evaluation subsets, statistics): I/O-bound threads


def auto_workers() -> int:
    """`data.workers: auto`: on up to 4 cores, 0 (decoding inside the training process: measured on 2 cores,
    CIFAR-10 JPEGs, 0.88x the in-memory samples/s against 0.83x with one DataLoader process, which takes a
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

    def read_many(self, items: list[str]) -> list[bytes]:
        return [self.read(item) for item in items]

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
        are decoded by libjpeg-turbo straight into the batch (`jpeg_decoded`); other files at the size are
        converted by PIL straight into it (3x faster than one tensor per file); the rest go through
        `decode_one`'s resize. A file that is not an image raises, naming it; or, given `unreadable`, its
        position is added there and its row left zero."""
        from nnrecipe.data.images import conform

        mode = "L" if self.channels == 1 else "RGB"
        out = np.zeros((len(paths), self.size, self.size, self.channels), dtype=np.uint8)
        try:
            blobs: list[bytes | None] = list(self.source.read_many(paths))
        except (UserError, OSError, ValueError):  # which one: read file by file, naming it
            blobs = [None] * len(paths)
        for j, path in enumerate(paths):
            try:
                data = blobs[j] if blobs[j] is not None else self.source.read(path)
            except UserError:
                if unreadable is None:
                    raise
                unreadable.append(j)
                continue
            image = jpeg_decoded(data, self.channels, out[j], self.size)
            if image is not None:
                if image.shape[:2] != (self.size, self.size):
                    resized = conform(torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0), self.channels, self.size)
                    out[j] = resized[0].permute(1, 2, 0).numpy()
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.seek(0)  # animated formats: first frame, as read_image
                    if im.size == (self.size, self.size):
                        out[j] = pixels(im, mode).reshape(self.size, self.size, -1)
                        continue
            except Exception:  # _decode reports it, naming the file
                pass
            try:
                out[j] = self._decode(data, path).permute(1, 2, 0).numpy()
            except UserError:
                if unreadable is None:
                    raise
                out[j] = 0  # whatever a failed decode left there
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


def jpeg_decoded(data: bytes, channels: int, into: np.ndarray, size: int) -> np.ndarray | None:
    """A JPEG decoded by libjpeg-turbo through simplejpeg, H x W x `channels` uint8: straight into `into`
    when it is `size` x `size`, else into a new array for the resize; None for what is left to PIL. The
    call releases the GIL and took 11 us a 32x32 CIFAR-10 image against torchvision.io's 36 us and PIL's
    97 us (Intel Xeon, 2 vCPUs), to the same pixels as PIL (tests/test_stream.py). Grey JPEGs wanted in RGB
    are repeated, as PIL's convert does; what PIL converts by a formula of its own (colour to grey, CMYK,
    YCCK) is left to it, as is a file libjpeg-turbo will not read (PIL then names it)."""
    if data[:3] != b"\xff\xd8\xff" or jpeg_turned(data):  # a photo to turn upright: PIL's
        return None
    try:
        height, width, space, _ = simplejpeg.decode_jpeg_header(data)
        if space not in ("YCbCr", "RGB", "Gray") or (channels == 1 and space != "Gray"):
            return None
        colorspace = "GRAY" if channels == 1 else "RGB"
        buffer = into if (height, width) == (size, size) else None
        return simplejpeg.decode_jpeg(data, colorspace=colorspace, buffer=buffer)
    except ValueError:
        return None


def prefetched(make: Callable[[int], T], start: int, stop: int, ahead: int = 2) -> Iterator[T]:
    """make(start), ..., make(stop - 1), each made by a thread while the ones before it train: worth it where
    the making waits on I/O or releases the GIL (reading files, tokenising, decoding), or the model computes
    on a GPU."""
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        pending = [pool.submit(make, i) for i in range(start, min(stop, start + ahead))]
        for i in range(start, stop):
            x = pending.pop(0).result()
            if i + ahead < stop:
                pending.append(pool.submit(make, i + ahead))
            yield x


def readable(paths: list[Path]) -> list[bool]:
    """Which files open as images (their header; nothing is decoded): a streamed set lists the unreadable
    ones as skipped up front, as the in-memory path does after decoding everything. A JPEG's header is read
    by libjpeg-turbo from the file's first 64 KB (2 us; PIL's open took 190 us a CIFAR-10 file in Python,
    9.6 s of 50,000); PIL judges the rest."""

    def check(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            if head[:3] == b"\xff\xd8\xff":
                height, width, _, _ = simplejpeg.decode_jpeg_header(head)
                return height > 0 and width > 0
        except (OSError, ValueError):  # unreadable, or a JPEG header libjpeg-turbo rejects: PIL's turn
            pass
        try:
            with Image.open(path) as im:
                return im.width > 0 and im.height > 0
        except Exception:  # any decoder's complaint: not usable
            return False

    def check_all(chunk: list[Path]) -> list[bool]:
        return [check(path) for path in chunk]

    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]  # Executor.map's chunksize is for processes
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        return [ok for part in pool.map(check_all, chunks) for ok in part]


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
    threads would take cores from the model's own: on 2 cores, CIFAR-10 JPEGs, 2,830 samples/s decoded in
    the training thread against 2,024 with one thread ahead, although the decoder releases the GIL."""
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
