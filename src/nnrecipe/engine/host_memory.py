"""How the C allocator treats the large blocks a CPU training step frees: kept in the heap for the next step
instead of handed back to the kernel and faulted in again.

glibc serves every allocation above its mmap threshold (which adapts, but never past 32 MB) with a fresh
mmap and returns it with munmap when freed. A tensor that size made every step is then mapped, page-faulted
and zeroed by the kernel page by page, every step: the dense gradient of MiniLM's 30,522 x 384 word
embedding (47 MB) cost 23 ms a step that way against 9 ms from the heap (bench/RESULTS.md). PyTorch's CPU
performance guide recommends jemalloc or tcmalloc for the same reason; they need LD_PRELOAD before the
process starts, while glibc's own thresholds can be raised from inside it (mallopt)."""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # malloc.h
MMAP_THRESHOLD = 512 * 2**20  # larger blocks (one-off data arrays, not per-step tensors) are still mapped
TRIM_THRESHOLD = 1024 * 2**20  # free memory at the heap's top kept up to this much
_kept = False


def keep_freed_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once; it cannot be undone). Returns whether
    they are raised: False off Linux, under a C library without mallopt (musl), or when the environment says
    NNRECIPE_MALLOC_TUNING=off. The process's peak memory is what the step needs either way; what changes
    is that freed blocks stay resident between steps."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("NNRECIPE_MALLOC_TUNING", "on") == "off":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept
