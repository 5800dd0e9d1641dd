"""Which files of a user's data folder are data: hidden names are not."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path


def hidden(name: str) -> bool:
    """A dot-name: `.ipynb_checkpoints`, `.thumbnails`, macOS's `._photo.jpg` resource forks. Such a folder
    became an image class (torchvision ImageFolder's trap too), the thumbnails and forks under it images of
    the set (a thumbnail in val of a photo in train is a leak), and a notebook's checkpoint copy of a text
    file a second copy in a language model's training text."""
    return name.startswith(".")


def visible_files(folder: Path, suffixes: Collection[str]) -> list[Path]:
    """The files under `folder` with one of `suffixes` (lower case), none under a hidden name, sorted."""
    return sorted(
        f for f in folder.rglob("*")
        if f.suffix.lower() in suffixes and f.is_file() and not any(map(hidden, f.relative_to(folder).parts))
    )  # fmt: skip
