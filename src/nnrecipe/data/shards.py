"""Pre-packed image shards (`nnrecipe pack`, `data.source: shards`): an image folder written once as WebDataset
tar files plus an index of where each image's bytes sit, read back by byte range from a local folder or any
fsspec URL (object storage: s3://, gs://, https://; `simplecache::s3://...` keeps each shard on local disk
after its first read).

Why WebDataset tars read by index (and not LitData): a shard is a plain tar of `<key>.<ext>` + `<key>.cls`
members that the `webdataset` and `wids` libraries, `tar` and any object store understand, so packing locks
nothing in. Reading by byte range instead of streaming each tar front to back keeps what a streamed folder
promises: epoch e's order is the seeded permutation of (seed, e) over all samples, each rank reads only its
own batches' samples, and a mid-epoch resume starts at the right sample without reading the ones before
it. LitData's chunk format is its own binary, and its shuffle is its own.

Layout of a packed set: `shards.json` (format, classes, the samples of each split), `index.npz` (per sample:
shard number, byte offset and size of the image member, label, file suffix), `<split>-NNNNNN.tar`.
`shards.json` is written last, so a folder without it is not a finished pack.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnrecipe.errors import UserError, existing_folder, free_folder

FORMAT = "nnrecipe-shards"
VERSION = 1
SUFFIXES = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"]


class ShardSource:
    """Where a packed set's image bytes are: `read(i)` gives sample i's file (one ranged read of its shard),
    `name(i)` says which it is. Picklable (a filesystem and arrays), so DataLoader workers read
    on their own."""

    def __init__(self, fs, root: str, location: str, shards: list[str], index: dict[str, np.ndarray]):
        self.fs, self.root, self.location, self.shards = fs, root, location, shards
        self.shard, self.offset, self.size = index["shard"], index["offset"], index["size"]
        self.suffix = index["suffix"]

    def read(self, i: int) -> bytes:
        shard, offset, size = self.shard[i], int(self.offset[i]), int(self.size[i])
        try:
            data = self.fs.cat_file(f"{self.root}/{self.shards[shard]}", start=offset, end=offset + size)
        except FileNotFoundError:
            raise UserError(
                f"shard not found: {self.location}/{self.shards[shard]} (the packed set is incomplete)"
            ) from None
        except OSError as e:
            raise UserError(f"cannot read {self.name(i)}: {e}") from None
        if len(data) != size:
            raise UserError(f"{self.name(i)}: {len(data)} of its {size} bytes are in the shard (a cut-off file?)")
        return data

    def read_many(self, items: list[int]) -> list[bytes]:
        """Samples' files at once: from local shards, each shard opened once and its samples read by offset
        (5 us a CIFAR-10 sample against read()'s 20 us); from a URL, by fsspec's cat_ranges (concurrent
        ranged requests on object stores). Raises if any read fails; `read` then names the file."""
        from fsspec.implementations.local import LocalFileSystem

        paths = [f"{self.root}/{self.shards[self.shard[i]]}" for i in items]
        starts = [int(self.offset[i]) for i in items]
        ends = [start + int(self.size[i]) for start, i in zip(starts, items)]
        if not isinstance(self.fs, LocalFileSystem):
            out = self.fs.cat_ranges(paths, starts, ends)
        else:
            out = [b""] * len(items)
            by_shard: dict[str, list[int]] = {}
            for j, path in enumerate(paths):
                by_shard.setdefault(path, []).append(j)
            for path, js in by_shard.items():
                with self.fs.open(path, "rb") as f:
                    for j in sorted(js, key=starts.__getitem__):  # forward through the file
                        f.seek(starts[j])
                        out[j] = f.read(ends[j] - starts[j])
        if any(len(data) != end - start for data, start, end in zip(out, starts, ends)):
            raise OSError("a sample is cut short")
        return out

    def name(self, i: int) -> str:
        return f"{self.location}/{self.shards[self.shard[i]]}:{i:09d}{SUFFIXES[self.suffix[i]]}"

    def same_set(self, other) -> bool:
        return isinstance(other, ShardSource) and (other is self or other.location == self.location)


@dataclass
class PackedSet:
    source: ShardSource
    classes: list[str]
    splits: dict[str, range]  # each split's sample numbers in index.npz
    labels: np.ndarray


def open_packed(location: str) -> PackedSet:
    """A packed set from a folder or fsspec URL, with a one-line error for every way it can be missing."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(location)
    except ImportError as e:  # s3fs, gcsfs...: fsspec names the package
        raise UserError(f"{location}: {e}") from None
    except ValueError as e:  # an unknown protocol
        raise UserError(f"{location}: {e}") from None
    root = root.rstrip("/")
    try:
        meta = json.loads(fs.cat_file(f"{root}/shards.json"))
        with fs.open(f"{root}/index.npz", "rb") as f:
            arrays = np.load(io.BytesIO(f.read()), allow_pickle=False)
            index = {k: arrays[k] for k in ("shard", "offset", "size", "label", "suffix")}
    except FileNotFoundError as e:
        raise UserError(
            f"{location}: not a packed set ({Path(str(e.filename or e)).name} missing); "
            f"write one with: nnrecipe pack <image folder> {location}"
        ) from None
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{location}: unreadable packed set: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"{location}/shards.json: not an {FORMAT} v{VERSION} file (format {found!r})")
    try:
        splits = {name: range(int(a), int(b)) for name, (a, b) in meta["splits"].items()}
        shards, classes = [str(n) for n in meta["shards"]], [str(c) for c in meta["classes"]]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{location}/shards.json: malformed ({type(e).__name__}: {e})") from None
    if any("/" in name or "\\" in name or name in ("", ".", "..") for name in shards):
        raise UserError(f"{location}/shards.json: shard names must be plain file names in the set's folder")
    n = len(index["shard"])
    if any(not 0 <= span.start <= span.stop <= n for span in splits.values()) or (
        n and not 0 <= int(index["shard"].min()) <= int(index["shard"].max()) < len(shards)
    ):
        raise UserError(f"{location}: shards.json and index.npz do not match (written by different packs?)")
    source = ShardSource(fs, root, location.rstrip("/"), shards, index)
    return PackedSet(source, classes, splits, index["label"].astype(np.int64))


def pack_image_folder(tree: Path, out: Path, shard_mb: float = 256.0, progress=None) -> dict:
    """Write `tree` (class-per-folder, optionally with train/ val/ test/ parts) as shards in `out`. Unreadable
    files are skipped and returned; `progress(done, total)` is called as files are written."""
    from nnrecipe.data.images import class_folders, list_image_files, tree_parts
    from nnrecipe.data.stream import readable

    tree, out = tree.expanduser(), out.expanduser()
    existing_folder(tree, "image folder")
    if not 0 < shard_mb < float("inf"):  # inf: a traceback converting it to bytes
        raise UserError(f"--shard-mb: a positive finite size in MB (got {shard_mb})")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; the packed set needs a folder (a new one, or an empty one)")
    if (out / "shards.json").exists():
        raise UserError(f"{out} already holds a packed set; remove it or choose another folder")
    # The shards went anywhere: into a run's folder, the current one, or a class folder of the tree itself.
    if out.resolve().is_relative_to(tree.resolve()):
        raise UserError(f"{out} is inside the image folder {tree}; write the packed set outside it")
    if not free_folder(out):
        raise UserError(f"{out} holds other files; the packed set needs a new or empty folder")
    parts = tree_parts(tree) or {"train": tree}
    train_root = parts.get("train", tree)
    classes = class_folders(train_root)
    if not classes:
        raise UserError(f"{train_root} has no class subfolders (expected <class>/<image files>)")
    listed, skipped = {}, []
    for name, root in parts.items():
        files, labels = list_image_files(root, classes)
        ok = readable(files)
        skipped += [str(f) for f, good in zip(files, ok) if not good]
        listed[name] = [(f, label) for f, label, good in zip(files, labels, ok) if good]
    total = sum(len(v) for v in listed.values())
    try:
        out.mkdir(parents=True, exist_ok=True)
        writer, splits = ShardWriter(out, int(shard_mb * 2**20)), {}
        for name, samples in listed.items():
            start = writer.count
            writer.begin(name)
            for f, label in samples:
                writer.add(f, label)
                if progress is not None:
                    progress(writer.count, total)
            writer.end()
            splits[name] = [start, writer.count]
        index = writer.index()
        tmp = out / "index.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **index)
        os.replace(tmp, out / "index.npz")
        meta = {"format": FORMAT, "version": VERSION, "classes": classes, "splits": splits, "shards": writer.names}
        tmp = out / "shards.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, out / "shards.json")  # last: its presence says the pack is whole
    except OSError as e:  # a full disk, no permission: the set stays unfinished (no shards.json)
        raise UserError(f"cannot write the packed set to {out}: {e.strerror or e}") from None
    return {"samples": writer.count, "shards": len(writer.names), "skipped": skipped, "classes": classes}


class ShardWriter:
    """Tar shards of at most `max_bytes` (a shard holds at least one sample), named `<split>-NNNNNN.tar`;
    members `<key>.<ext>` (the file's own bytes) and `<key>.cls` (the label), reproducible (mtime 0)."""

    def __init__(self, out: Path, max_bytes: int):
        self.out, self.max_bytes = out, max_bytes
        self.names: list[str] = []
        self.rows: list[tuple[int, int, int, int, int]] = []  # shard, offset, size, label, suffix
        self.count, self.tar, self.split = 0, None, ""

    def begin(self, split: str) -> None:
        self.split = split

    def add(self, path: Path, label: int) -> None:
        try:
            data = path.read_bytes()
        except OSError as e:  # gone or unreadable since it was listed
            raise UserError(f"cannot read {path}: {e.strerror or e}") from None
        suffix = path.suffix.lower()
        if self.tar is None or (self.tar.offset + len(data) > self.max_bytes and self.tar.members):
            self._next_shard()
        key = f"{self.count:09d}"
        self._member(f"{key}{suffix}", data)
        offset = self.tar.offset - _padded(len(data))  # the data block just written
        self._member(f"{key}.cls", str(label).encode())
        self.rows.append((len(self.names) - 1, offset, len(data), label, SUFFIXES.index(suffix)))
        self.count += 1

    def end(self) -> None:
        if self.tar is not None:
            self._close()

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self.tar.addfile(info, io.BytesIO(data))

    def _next_shard(self) -> None:
        if self.tar is not None:
            self._close()
        name = f"{self.split}-{sum(n.startswith(self.split + '-') for n in self.names):06d}.tar"
        self.names.append(name)
        self.tar = tarfile.open(self.out / (name + ".tmp"), "w", format=tarfile.USTAR_FORMAT)

    def _close(self) -> None:
        self.tar.close()
        os.replace(self.out / (self.names[-1] + ".tmp"), self.out / self.names[-1])
        self.tar = None

    def index(self) -> dict[str, np.ndarray]:
        rows = np.array(self.rows, dtype=np.int64).reshape(-1, 5)
        return {
            "shard": rows[:, 0].astype(np.int32),
            "offset": rows[:, 1],
            "size": rows[:, 2],
            "label": rows[:, 3],
            "suffix": rows[:, 4].astype(np.int8),
        }


def _padded(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
