"""16-bit grey images (PNG, TIFF: microscopy, medical, depth) are scaled to 8 bits wherever a file is read:
PIL's convert clipped them at 255, so all but the darkest pixels of such an image were white."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tests.test_stream import tree_recipe

from nnrecipe.data.box_loader import read_rgb
from nnrecipe.data.images import load_splits, read_image
from nnrecipe.data.pixels import eight_bit
from nnrecipe.tasks.serving import decode_image

RAMP = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
EXPECTED = np.array([[0, 1, 4, 128, 255]], dtype=np.uint8)  # value * 255 / 65535, rounded


def sixteen_bit(path, fmt: str = "PNG", values: np.ndarray = RAMP):
    Image.fromarray(values).save(path, format=fmt)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16"), im.mode  # what PIL opens such a file as
    return path


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_file_reads_as_its_values_scaled_everywhere(tmp_path, fmt):
    path = sixteen_bit(tmp_path / f"ramp.{fmt.lower()}", fmt)
    assert np.array_equal(read_image(path)[0].numpy(), EXPECTED)  # grey, as it is
    assert np.array_equal(read_image(path, 1)[0].numpy(), EXPECTED)
    assert all(np.array_equal(c.numpy(), EXPECTED) for c in read_image(path, 3))  # grey repeated in RGB
    assert np.array_equal(decode_image(path.read_bytes(), 0, "L")[0].numpy(), EXPECTED)  # serving
    assert torch.allclose(read_rgb(str(path))[0], torch.from_numpy(EXPECTED / 255).float())  # detection
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        assert np.array_equal(np.asarray(eight_bit(im)), EXPECTED)


def test_a_16_bit_folder_streams_to_the_pixels_it_loads_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    for c, level in (("dark", 8000), ("bright", 50000)):  # both over 255: clipped, the classes were one white
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(12):
            values = np.clip(rng.normal(level, 3000, (16, 16)), 0, 65535).astype(np.uint16)
            sixteen_bit(tmp_path / "tree" / c / f"{i}.png", values=values)
    memory = load_splits(tree_recipe(tmp_path, tmp_path / "tree", "data.stream=false").data).train
    streamed = load_splits(tree_recipe(tmp_path, tmp_path / "tree", "data.stream=true").data).train
    assert torch.equal(streamed.images[list(range(len(memory.labels)))], memory.images)  # the at-size fast path
    dark, bright = (memory.images[memory.labels == k].float().mean().item() for k in (1, 0))
    assert 20 < dark < 45 and 180 < bright < 210, (dark, bright)  # 8000 and 50000 of 65535


def turned_jpeg(path, rows: int = 16, cols: int = 16, orientation: int = 6):
    """A photo stored lying down, with a bright top row, and an EXIF tag saying to turn it 90 degrees clockwise
    (as a phone saves a portrait photo): upright, the bright row is the right-hand column."""
    values = np.full((rows, cols), 30, dtype=np.uint8)
    values[0] = 250
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(values).convert("RGB").save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def test_a_photo_is_read_upright_as_its_exif_says_everywhere(tmp_path):
    from PIL import ImageOps

    from nnrecipe.data.pixels import jpeg_turned, upright_size

    path = turned_jpeg(tmp_path / "portrait.jpg", rows=8, cols=16)
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im).convert("L"))
    assert shown.shape == (16, 8) and shown[:, -1].mean() > 200 and shown[:, 0].mean() < 60  # upright: 8 wide
    assert np.array_equal(read_image(path, 1)[0].numpy(), shown)  # it was 16 wide, the bright row on top
    assert np.array_equal(decode_image(path.read_bytes(), 0, "L")[0].numpy(), shown)  # serving
    assert read_rgb(str(path)).shape == (3, 16, 8)  # detection
    with Image.open(path) as im:
        assert upright_size(im) == (8, 16)  # YOLO's normalised boxes are scaled by it (data/boxes.py)
    assert jpeg_turned(path.read_bytes()) and not jpeg_turned(
        turned_jpeg(tmp_path / "up.jpg", orientation=1).read_bytes()
    )


def test_a_folder_of_turned_photos_loads_upright_in_memory_and_streamed(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(8):
            turned_jpeg(tmp_path / "tree" / c / f"{i}.jpg")
    memory = load_splits(tree_recipe(tmp_path, tmp_path / "tree", "data.stream=false", "data.channels=1").data).train
    streamed = load_splits(tree_recipe(tmp_path, tmp_path / "tree", "data.stream=true", "data.channels=1").data).train
    assert torch.equal(streamed.images[list(range(len(memory.labels)))], memory.images)
    columns = memory.images[:, 0].float().mean((0, 1))  # the libjpeg-turbo path gave them lying down
    assert columns[-1] > 200 and columns[:-2].max() < 80, columns
