"""8-bit pixels from any PIL image, upright, one way for training, streaming, detection and serving, so that a
file gives the same pixels wherever it is read."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

# 16-bit grey, as PIL opens 16-bit PNG and TIFF files (microscopy, medical and depth images).
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ORIENTATION = 0x0112  # the EXIF tag: 1 upright; 2-8 mirrored and/or turned by 90, 180 or 270 degrees
TURNED = (5, 6, 7, 8)  # width and height swap
# Formats whose EXIF PIL reads with the header (a PNG's may sit after the pixels: reading it decodes them).
EXIF_AT_OPEN = ("JPEG", "MPO", "TIFF", "WEBP")


def orientation(im: Image.Image) -> int:
    if im.format not in EXIF_AT_OPEN and "exif" not in im.info:
        return 1
    value = im.getexif().get(ORIENTATION, 1)
    return value if value in range(1, 9) else 1


def upright(im: Image.Image) -> Image.Image:
    """`im` as a viewer (and a labelling tool, OpenCV) shows it: a phone stores a portrait photo sideways with
    an EXIF tag saying how to turn it, and the tag was ignored, so the model saw it lying down and a box drawn
    on the photo as shown landed elsewhere."""
    return im if orientation(im) == 1 else ImageOps.exif_transpose(im)


def upright_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of the upright image, from the header."""
    return (im.height, im.width) if orientation(im) in TURNED else im.size


def jpeg_turned(data: bytes) -> bool:
    """Whether a JPEG's bytes say to turn it; the EXIF is parsed only when the file carries one near its start
    (most data-set JPEGs do not: the scan costs nothing there)."""
    if data.find(b"Exif\x00\x00", 0, 1 << 16) < 0:
        return False
    with Image.open(io.BytesIO(data)) as im:
        return orientation(im) != 1


def eight_bit(im: Image.Image) -> Image.Image:
    """`im`, with 16-bit grey scaled to 8 bits (65535 -> 255, rounded): PIL's convert clips it at 255, which
    turned every pixel but the darkest 0.4% of the range white."""
    if im.mode not in SIXTEEN_BIT:
        return im
    values = np.asarray(im).astype(np.uint32)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def pixels(im: Image.Image, mode: str) -> np.ndarray:
    """H x W (grey, mode "L") or H x W x 3 ("RGB") uint8, upright."""
    return np.asarray(eight_bit(upright(im)).convert(mode), dtype=np.uint8)
