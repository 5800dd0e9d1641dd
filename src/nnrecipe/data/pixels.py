"""8-bit pixels from any PIL image, one way for training, streaming, detection and serving, so that a file
gives the same pixels wherever it is read."""

from __future__ import annotations

import numpy as np
from PIL import Image

# 16-bit grey, as PIL opens 16-bit PNG and TIFF files (microscopy, medical and depth images).
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def eight_bit(im: Image.Image) -> Image.Image:
    """`im`, with 16-bit grey scaled to 8 bits (65535 -> 255, rounded): PIL's convert clips it at 255, which
    turned every pixel but the darkest 0.4% of the range white."""
    if im.mode not in SIXTEEN_BIT:
        return im
    values = np.asarray(im).astype(np.uint32)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def pixels(im: Image.Image, mode: str) -> np.ndarray:
    """H x W (grey, mode "L") or H x W x 3 ("RGB") uint8."""
    return np.asarray(eight_bit(im).convert(mode), dtype=np.uint8)
