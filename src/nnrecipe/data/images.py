"""Image sources (digits, CIFAR-10, ImageFolder) decoded once into uint8 tensors, with fixed splits.

Decoding every image once and keeping the set in memory as N x C x H x W uint8 is what lets small nets
train at compute speed on two cores: no loader workers fighting the model for the CPU. Within one process a
decoded tree is kept for the next reader (continual stages, their scoring, in-process tune trials), for as
long as no file in it changes.
"""

from __future__ import annotations

import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

from nnrecipe.data.files import hidden, visible_files
from nnrecipe.data.pixels import eight_bit, upright
from nnrecipe.data.shards import open_packed
from nnrecipe.data.splits import holdout
from nnrecipe.data.stream import StreamedImages, readable
from nnrecipe.errors import UserError, existing_folder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass
class ImageSet:
    images: torch.Tensor | StreamedImages  # uint8, N x C x H x W (or files decoded on use: data/stream.py)
    labels: torch.Tensor  # int64, N
    paths: list[str] | None = None  # source files, when there are any

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        return isinstance(self.images, StreamedImages)

    def concat(self, other: ImageSet) -> ImageSet:
        if self.streamed or other.streamed:
            if not (self.streamed and other.streamed):
                raise UserError(
                    "data.stream: a streamed set and an in-memory one cannot be joined; set data.stream: false"
                )
            return ImageSet(self.images.concat(other.images), torch.cat([self.labels, other.labels]))
        return ImageSet(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]))

    def subset(self, idx) -> ImageSet:
        idx = torch.as_tensor(idx, dtype=torch.long)
        images = self.images.subset(idx) if self.streamed else self.images[idx]
        return ImageSet(images, self.labels[idx], [self.paths[i] for i in idx.tolist()] if self.paths else None)

    def tensor(self) -> torch.Tensor:
        """The images as one uint8 tensor (decoding a streamed set: for small subsets)."""
        return self.images[:] if self.streamed else self.images


@dataclass
class ImageSplits:
    classes: list[str]
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    skipped: list[str] = field(default_factory=list)  # unreadable files, reported in the run


def load_splits(data, first: list[str] | None = None) -> ImageSplits:
    """Load the source named by the recipe's `data` section and split it (stratified, seeded), keeping the
    classes `data.classes` names (split membership stays that of the whole source). `first`: classes
    numbered before the kept ones (a continued run's), whether the data holds them or not."""
    splits = source_splits(data)
    if data.classes is not None or first is not None:
        kept = data.classes or splits.classes
        first = first or []
        splits = keep_classes(splits, kept, first + [c for c in kept if c not in first])
    if data.limit:
        splits.train = splits.train.subset(range(min(data.limit, len(splits.train))))
    return splits


def source_splits(data) -> ImageSplits:
    """The whole source's splits, all classes, in the recipe's channels and size. An in-memory image
    folder's are kept for the next call with the same `data` section (whatever classes and limit it keeps:
    continual stages read one tree for many class sets) while no file in the tree changed."""
    stamp = folder_stamp(data)
    key = json.dumps(data.model_dump(mode="json", exclude={"classes", "limit"}))
    cached = _SPLITS.get(key)
    if stamp is not None and cached is not None and cached[0] == stamp:
        return copied(cached[1])
    splits = read_source(data)
    _SPLITS.pop(key, None)
    if stamp is not None and not any(part is not None and part.streamed for part in (splits.train, splits.val)):
        while len(_SPLITS) >= 8:
            _SPLITS.pop(next(iter(_SPLITS)))
        _SPLITS[key] = (stamp, copied(splits))
    return splits


_SPLITS: dict[str, tuple[tuple, ImageSplits]] = {}


def copied(splits: ImageSplits) -> ImageSplits:
    """New ImageSplits and ImageSets over the same (read-only by convention) tensors."""

    def one(part: ImageSet | None) -> ImageSet | None:
        return None if part is None else ImageSet(part.images, part.labels, part.paths)

    return ImageSplits(list(splits.classes), one(splits.train), one(splits.val), one(splits.test), list(splits.skipped))


def folder_stamp(data) -> tuple | None:
    """(path, mtime, size) of every file of an image-folder source, None for other sources or a missing folder."""
    if data.source != "imagefolder" or data.path is None or data.stream is True:
        return None
    root = Path(data.path).expanduser()
    if not root.is_dir():
        return None
    sub = tree_parts(root)
    train = sub.get("train", root)
    classes = class_folders(train)
    stamp = []
    for here in [train] + [sub[k] for k in sub if k != "train"]:
        try:
            files = list_image_files(here, classes)[0]
        except UserError:
            return None
        stamp.append(tuple((str(f), *file_stamp(f)) for f in files))
    return tuple(stamp)


def read_source(data) -> ImageSplits:
    if data.stream is True and data.source not in ("imagefolder", "shards"):
        raise UserError(
            f"data.stream: true streams image folders and shards; {data.source} is held in memory (use auto or false)"
        )
    if data.source == "digits":
        splits = _digits(data)
    elif data.source == "cifar10":
        splits = _cifar10(data)
    elif data.source == "shards":
        splits = _shards(data)
    else:
        splits = _imagefolder(data)
    size = data.image_size or splits.train.images.shape[-1]
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is not None:
            part.images = (
                part.images.conformed(data.channels, size)
                if part.streamed
                else conform(part.images, data.channels, size)
            )
    return splits


def keep_classes(splits: ImageSplits, kept: list[str], order: list[str]) -> ImageSplits:
    """Only the examples of `kept` classes, their labels numbered by position in `order`."""
    unknown = [c for c in kept if c not in splits.classes]
    if unknown:
        raise UserError(
            f"data.classes: {', '.join(unknown)} not in the data (its classes: {', '.join(splits.classes)})"
        )
    new_index = torch.full((len(splits.classes),), -1, dtype=torch.long)
    for c in kept:
        new_index[splits.classes.index(c)] = order.index(c)
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is not None:
            mapped = new_index[part.labels]
            part = part.subset(torch.nonzero(mapped >= 0).flatten())
            part.labels = new_index[part.labels]
            setattr(splits, name, part if len(part) else None)
    if splits.train is None:
        raise UserError(f"data.classes: no training images of {', '.join(kept)}")
    splits.classes = list(order)
    return splits


def conform(images: torch.Tensor, channels: int | None, size: int) -> torch.Tensor:
    """Convert a uint8 batch to `channels` and a square `size` (antialiased resize)."""
    if channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif channels == 1 and images.shape[1] == 3:
        images = F.rgb_to_grayscale(images)
    if images.shape[-2:] != (size, size):
        images = F.resize(images, [size, size], antialias=True)
    return images


def _split(full: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet | None]:
    kept, held = holdout(len(full), fraction, seed, full.labels.tolist())
    return (full.subset(kept), full.subset(held)) if held else (full, None)


def _digits(data) -> ImageSplits:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 8x8 pixel values 0..16 -> 0..255 so every source shares the uint8 convention.
    images = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    full = ImageSet(images, torch.from_numpy(d.target.astype(np.int64)))
    rest, test = _split(full, data.test_fraction, data.split_seed)
    train, val = _split(rest, data.val_fraction, data.split_seed)
    return ImageSplits([str(c) for c in d.target_names], train, val, test)


def _cifar10(data) -> ImageSplits:
    from torchvision.datasets import CIFAR10

    root = Path(data.path or Path.home() / ".cache" / "nnrecipe" / "cifar10").expanduser()
    parts = {}
    for split, is_train in (("train", True), ("test", False)):
        try:
            ds = CIFAR10(str(root), train=is_train, download=False)
        except RuntimeError:
            if not data.download:
                raise UserError(_cifar_missing(root)) from None
            try:
                ds = CIFAR10(str(root), train=is_train, download=True)
            except Exception as e:  # urllib/SSL/socket errors: no network
                raise UserError(_cifar_missing(root) + f" (download failed: {type(e).__name__}: {e})") from None
        parts[split] = ImageSet(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))
    train, val = _split(parts["train"], data.val_fraction, data.split_seed)
    return ImageSplits(list(ds.classes), train, val, parts["test"])


def _cifar_missing(root: Path) -> str:
    return (
        f"CIFAR-10 files not found in {root}/cifar-10-batches-py and could not be downloaded. "
        f"Offline: download {CIFAR10_URL}, extract it so that {root}/cifar-10-batches-py/data_batch_1 exists, "
        f"or set data.path to the folder holding cifar-10-batches-py. "
        f"A CIFAR-10 ImageFolder tree works too: data.source=imagefolder data.path=<tree>."
    )


def _imagefolder(data) -> ImageSplits:
    if data.path is None:
        raise UserError("data.path: required for data.source: imagefolder (a folder with one subfolder per class)")
    root = existing_folder(Path(data.path).expanduser(), "data.path: folder")
    sub = tree_parts(root)
    train_root = sub.get("train", root)
    classes = class_folders(train_root)
    if not classes:
        raise UserError(f"data.path: {train_root} has no class subfolders (expected <class>/<image files>)")
    if len(classes) == 1:  # it trained a classifier that is always right and learns nothing
        raise UserError(
            f"data.path: {train_root} has one class subfolder ({classes[0]}); a classifier needs two or more"
        )
    skipped: list[str] = []
    size = data.image_size
    stream = choose_streaming(data, train_root, classes, [sub[k] for k in sub if k != "train"])
    train = read_image_tree(train_root, classes, data.channels, size, skipped, stream)
    empty = [c for c, n in zip(classes, torch.bincount(train.labels, minlength=len(classes)).tolist()) if n == 0]
    if empty:  # a head row no example ever trains: the class is never predicted, and reports divide by nothing
        raise UserError(f"data.path: no readable images in the class folder(s) {', '.join(empty)} of {train_root}")
    size = size or train.images.shape[-1]
    val_root = sub.get("val", sub.get("valid"))
    val = read_image_tree(val_root, classes, data.channels, size, skipped, stream) if val_root else None
    test = read_image_tree(sub["test"], classes, data.channels, size, skipped, stream) if "test" in sub else None
    return held_out(data, classes, train, val, test, skipped)


def held_out(data, classes, train: ImageSet, val: ImageSet | None, test: ImageSet | None, skipped=()) -> ImageSplits:
    """The splits a source gives, with the missing test and validation splits cut from training (stratified,
    data.split_seed)."""
    if test is None:
        train, test = _split(train, data.test_fraction, data.split_seed)
    if val is None:
        train, val = _split(train, data.val_fraction, data.split_seed)
    return ImageSplits(classes, train, val, test, list(skipped))


def _shards(data) -> ImageSplits:
    """A packed set (data/shards.py): streamed from its shards, or decoded into memory when data.stream says
    so (auto: when the decoded set fits data.memory_cap_mb, as for folders)."""
    location = data.url or (str(Path(data.path).expanduser()) if data.path is not None else None)
    if location is None:
        raise UserError("data.path: required for data.source: shards (the folder `nnrecipe pack` wrote), or data.url")
    packed = open_packed(location)
    train_span = packed.splits.get("train")
    if not train_span:
        raise UserError(f"{location}: the packed set has no training images")

    def part(name: str, channels: int, size: int) -> ImageSet | None:
        span = packed.splits.get(name)
        if not span:
            return None
        images = StreamedImages(list(span), channels, size, packed.source)
        return ImageSet(images, torch.from_numpy(packed.labels[span.start : span.stop]))

    first = read_image(
        io.BytesIO(packed.source.read(train_span.start)), data.channels, packed.source.name(train_span.start)
    )
    channels, size = data.channels or first.shape[0], data.image_size or first.shape[-1]
    train = part("train", channels, size)
    val, test = part("val", channels, size) or part("valid", channels, size), part("test", channels, size)
    total = sum(len(p) for p in (train, val, test) if p is not None)
    if not (data.stream if data.stream != "auto" else over_memory_cap(data, total, channels, size, location)):
        for p in (train, val, test):
            if p is not None:
                p.images = p.images[:]
    return held_out(data, packed.classes, train, val, test)


def class_folders(root: Path) -> list[str]:
    """The class names of an image-folder tree: its sub-folders, hidden ones aside, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not hidden(p.name))


def tree_parts(root: Path) -> dict[str, Path]:
    """The split folders an image-folder source has (train, val, valid, test); none: the root is the train set."""
    return {name: root / name for name in ("train", "val", "valid", "test") if (root / name).is_dir()}


def list_image_files(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """The image files under each class folder of `root` (sorted) and their labels. The listing is kept for
    the next call in the process while no folder in the tree changed (its mtime moves when a file is added,
    removed or renamed), so a continual run's stages do not walk 50,000 files again and again. A folder changed
    within a second of the listing is not trusted to show a later change (timestamps are coarse), so a listing
    of a tree being written is not kept."""
    unknown = [name for name in class_folders(root) if name not in classes]
    if unknown:
        raise UserError(
            f"{root}: class folders {', '.join(unknown)} are not among the run's classes ({', '.join(classes)})"
        )
    key = (str(root), tuple(classes))
    cached = _LISTED.get(key)
    if cached is not None and all(mtime_ns(folder) == stamp for folder, stamp in cached[0]):
        return list(cached[1]), list(cached[2])
    files: list[Path] = []
    labels: list[int] = []
    listed_at = time.time_ns()
    folders = [(str(root), mtime_ns(str(root)))]
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            found = []
            for here, subfolders, names in os.walk(folder):
                subfolders[:] = [d for d in subfolders if not hidden(d)]
                folders.append((here, mtime_ns(here)))
                found += [os.path.join(here, n) for n in names
                          if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES and not hidden(n)]  # fmt: skip
            files += [Path(f) for f in sorted(found, key=lambda f: f.split(os.sep))]  # Path order
            labels += [label] * len(found)
    if not files:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if loose:  # it said "no image files found" about a folder of images
            raise UserError(f"{root}: images directly in it ({loose[0]}, ...); an ImageFolder tree holds them in "
                            f"a folder per class: {root}/<class>/<image>, classes {', '.join(classes[:10])}"
                            + (", ..." if len(classes) > 10 else ""))  # fmt: skip
        raise UserError(f"{root}: no image files found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    _LISTED.pop(key, None)
    if all(stamp is not None and stamp < listed_at - 10**9 for _, stamp in folders):
        while len(_LISTED) >= 8:
            _LISTED.pop(next(iter(_LISTED)))
        _LISTED[key] = (folders, files, labels)
    return list(files), list(labels)


_LISTED: dict[tuple, tuple[list[tuple[str, int]], list[Path], list[int]]] = {}


def mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def choose_streaming(data, train_root: Path, classes: list[str], others: list[Path]) -> bool:
    """data.stream, with `auto` resolved from the decoded size (files x C x H x W) against
    data.memory_cap_mb; an auto choice to stream is printed."""
    if data.stream != "auto":
        return bool(data.stream)
    files = [p for root in (train_root, *others) for p in list_image_files(root, classes)[0]]
    first = read_image(files[0], data.channels)
    return over_memory_cap(data, len(files), first.shape[0], data.image_size or first.shape[-1], "disk")


def over_memory_cap(data, count: int, channels: int, side: int, where: str) -> bool:
    """`data.stream: auto`'s choice: whether `count` decoded images (count x C x side x side bytes) would pass
    data.memory_cap_mb; a choice to stream is printed."""
    mb = count * channels * side * side / 2**20
    if mb <= data.memory_cap_mb:
        return False
    from nnrecipe.engine.loop import console

    console.print(
        f"streaming {count:,} images from {where}: decoded they would take {mb:,.0f} MB, over data.memory_cap_mb "
        f"{data.memory_cap_mb:,} (data.stream: false keeps them in memory)"
    )
    return True


def read_image_tree(
    root: Path, classes: list[str], channels: int | None, size: int | None, skipped: list[str], stream: bool = False
) -> ImageSet:
    """Decode a class-per-folder tree into one uint8 tensor (or, streamed, check each file's header and keep
    the paths); unreadable files are skipped and listed."""
    files, labels = list_image_files(root, classes)
    first = read_image(files[0], channels) if size is None or channels is None else None
    channels = channels or first.shape[0]
    size = size or first.shape[-1]
    if stream:
        ok = readable(files)
        skipped += [str(f) for f, good in zip(files, ok) if not good]
        kept = [i for i, good in enumerate(ok) if good]
        if not kept:
            raise UserError(f"{root}: none of the {len(files)} image files could be read")
        paths = [str(files[i]) for i in kept]
        return ImageSet(StreamedImages(paths, channels, size), torch.tensor([labels[i] for i in kept]), paths)

    key = (str(root), tuple(classes), channels, size)
    stamp = tuple((str(f), *file_stamp(f)) for f in files)
    cached = _DECODED.get(key)
    if cached is not None and cached[0] == stamp:
        found, bad = cached[1]
        skipped += bad
        return ImageSet(found.images, found.labels, found.paths)
    found, bad = decode_tree(files, labels, channels, size, root)
    _DECODED.pop(key, None)
    while len(_DECODED) >= 3:  # a train, val and test tree: the cache is for re-reading, not a store
        _DECODED.pop(next(iter(_DECODED)))
    _DECODED[key] = (stamp, (found, bad))
    skipped += bad
    return ImageSet(found.images, found.labels, found.paths)


_DECODED: dict[tuple, tuple[tuple, tuple[ImageSet, list[str]]]] = {}


def file_stamp(path: Path) -> tuple[int, int]:
    st = os.stat(str(path))
    return st.st_mtime_ns, st.st_size


def decode_tree(
    files: list[Path], labels: list[int], channels: int, size: int, root: Path
) -> tuple[ImageSet, list[str]]:
    """Decode `files` with the streamed path's batch decoder (so both paths give the same pixels by
    construction), in chunks on threads; the unreadable ones are returned by name."""
    from nnrecipe.engine.progress import progress

    images = StreamedImages([str(f) for f in files], channels, size)

    def load(chunk: list[str]) -> list[torch.Tensor | None]:
        bad: list[int] = []
        batch = images.decode_batch(chunk, bad)
        return [None if j in bad else image for j, image in enumerate(batch)]

    chunks = [images.paths[i : i + 256] for i in range(0, len(images), 256)]
    decoded: list[torch.Tensor | None] = []
    # a bar on a terminal: a large tree took a minute or more to decode without a sign of life
    with (
        ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool,
        progress(f"decoding {root.name}", len(files)) as advance,  # its full path left no room
    ):
        for part in pool.map(load, chunks):
            decoded += part
            advance(len(part))
    keep = [i for i, img in enumerate(decoded) if img is not None]
    bad = [str(files[i]) for i in range(len(files)) if decoded[i] is None]
    if not keep:
        raise UserError(f"{root}: none of the {len(files)} image files could be decoded")
    found = ImageSet(
        torch.stack([decoded[i] for i in keep]), torch.tensor([labels[i] for i in keep]), [str(files[i]) for i in keep]
    )
    return found, bad


def image_inputs(inputs: list[str]) -> list[str]:
    """Image files to predict on: each folder replaced by the image files under it, sorted (a folder was
    reported as "image not found"); a missing path is named. A file in a folder that does not open as an
    image is skipped with a word, as training skips it: one broken file among 100,000 stopped the whole
    prediction with nothing written. A file named on its own that cannot be read is still an error."""
    files: list[str] = []
    for item in inputs:
        if not item.strip():  # Path("") is the current folder: every image under it was predicted
            raise UserError("an empty input: give image files or folders")
        path = Path(item)
        if path.is_dir():
            found = [str(f) for f in visible_files(path, IMAGE_SUFFIXES)]
            if not found:
                raise UserError(
                    f"{item}: a folder without image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            ok = readable([Path(f) for f in found])
            broken = [f for f, good in zip(found, ok) if not good]
            if not any(ok):
                raise UserError(f"{item}: none of its {len(found)} image file(s) can be read, e.g. {broken[0]}")
            if broken:
                from rich.markup import escape

                from nnrecipe.engine.loop import console

                shown = escape(f"skipped {len(broken)} unreadable file(s) in {item}, e.g. {broken[0]}")
                console.print(f"[yellow]{shown}[/yellow]")
            files += [f for f, good in zip(found, ok) if good]
        elif path.is_file():
            files.append(item)
        else:
            raise UserError(f"image not found: {item}")
    return files


def read_image(path, channels: int | None = None, name: str | None = None) -> torch.Tensor:
    """Decode one file (a path, or an open binary file called `name`) to uint8 C x H x W; raises UserError
    naming the file if it is not a readable image."""
    name = name or path
    try:
        with Image.open(path) as im:
            im.seek(0)  # animated formats: first frame
            im = eight_bit(upright(im))  # turned as its EXIF says; 16-bit grey scaled, not clipped
            if channels is not None:
                im = im.convert("L" if channels == 1 else "RGB")
            elif im.mode not in ("L", "RGB"):  # palette, alpha, CMYK, 16-bit...: to grey or RGB
                im = im.convert("L" if im.mode in ("1", "LA", "I", "F") else "RGB")
            array = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"image not found: {name}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {name}: {e}") from None  # a bomb is skipped, as the header check does
    img = torch.from_numpy(array.copy())
    return img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1).contiguous()
