"""Which process of a multi-process run this is (torchrun / accelerate launch set RANK and WORLD_SIZE)."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes run files."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
