"""Image folders bigger than memory (`data.stream`): the streamed path sees the in-memory path's images in the
same order, a mid-epoch resume is exact, a streamed run trains, and its resident memory stays below what the
in-memory run needs for the decoded set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import make_recipe
from tests.test_resume import assert_resumes_exactly

from nnrecipe.data.images import load_splits
from nnrecipe.data.loader import TensorLoader
from nnrecipe.data.stream import StreamedImages, readable
from nnrecipe.errors import UserError
from nnrecipe.tasks import get_family

ROOT = Path(__file__).resolve().parents[1]


def noise_tree(root: Path, per_class: int, side: int, classes: str = "abc", seed: int = 0) -> Path:
    """Classes whose images differ in brightness (learnable), noise on top, sizes that vary (resized on load)."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 60 + 70 * k
            img = np.clip(rng.normal(base, 40, (side + i % 3, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{i}.png")
    return root


def tree_recipe(tmp_path, tree, *overrides):
    return make_recipe(
        tmp_path / "runs",
        "data.source=imagefolder",
        f"data.path={tree}",
        "data.image_size=16",
        "model.name=convnet",
        *overrides,
    )


def test_streamed_and_in_memory_loaders_give_the_same_batches_in_the_same_order(tmp_path):
    tree = noise_tree(tmp_path / "tree", 30, 20)
    memory = load_splits(tree_recipe(tmp_path, tree, "data.stream=false").data)
    streamed = load_splits(tree_recipe(tmp_path, tree, "data.stream=true").data)
    assert (
        isinstance(streamed.train.images, StreamedImages) and streamed.train.images.shape == memory.train.images.shape
    )
    a = TensorLoader(memory.train.images, memory.train.labels, 8, shuffle=True, seed=3)
    for workers in (0, 1):  # threads, and a DataLoader worker process
        b = TensorLoader(streamed.train.images, streamed.train.labels, 8, shuffle=True, seed=3, workers=workers)
        for epoch in (0, 1):
            pairs = list(zip(a.batches(epoch), b.batches(epoch), strict=True))
            assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in pairs)
    # A mid-epoch start decodes from batch 3 on, equal to the rest of the full epoch.
    later = list(b.batches(1, start=3))
    assert len(later) == len(a) - 3 and all(torch.equal(x, u) for (x, _), (u, _) in zip(later, list(a.batches(1))[3:]))


@pytest.mark.parametrize("channels", [3, 1])
def test_jpegs_decode_to_the_pixels_pil_gives_whatever_their_colour_space(tmp_path, channels):
    """The batch decoder's libjpeg-turbo call against PIL (read_image + the resize) file by file: colour, grey
    and CMYK JPEGs, at the size and resized, beside a PNG, in RGB and grey; a corrupt JPEG is named."""
    from nnrecipe.data.images import conform, read_image

    rng = np.random.default_rng(0)
    files = []
    for i, (mode, side) in enumerate([("RGB", 24), ("RGB", 31), ("L", 24), ("L", 40), ("CMYK", 24), ("RGB", 24)]):
        image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).convert(mode)
        files.append(tmp_path / f"{i}.{'png' if i == 5 else 'jpg'}")
        image.save(files[-1], quality=85)
    images = StreamedImages([str(f) for f in files], channels, 24)
    batch = images.decode_batch(images.paths)
    for f, decoded in zip(files, batch):
        assert torch.equal(decoded, conform(read_image(f, channels).unsqueeze(0), channels, 24)[0]), f.name
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 64)
    with pytest.raises(UserError, match="cannot decode image .*bad.jpg"):
        images.decode_batch(images.paths + [str(tmp_path / "bad.jpg")])


def test_the_header_check_keeps_what_pil_opens_and_lists_the_rest(tmp_path):
    """`readable` judges JPEG headers by libjpeg-turbo and the rest by PIL, in chunks of 256 across threads:
    it agrees with PIL's open on every kind of file, in the files' order."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    files, expected = [], []
    for i in range(600):  # more than two chunks, kinds interleaved so that order matters
        f = tmp_path / f"{i}.{['jpg', 'png', 'jpg', 'txt', 'jpg'][i % 5]}"
        kind = i % 5
        if kind == 0:
            image.save(f, quality=80)
        elif kind == 1:
            image.save(f)
        elif kind == 2:  # a JPEG cut after its header: the header opens, as it does for PIL
            image.save(f, quality=80)
            data = f.read_bytes()
            f.write_bytes(data[: data.index(b"\xff\xda") + 20])  # the scan's first bytes only
        elif kind == 3:
            f.write_text("not an image")
        else:  # JPEG magic, then nothing a decoder reads
            f.write_bytes(b"\xff\xd8\xff" + bytes(64))
        files.append(f)
        expected.append(kind in (0, 1, 2))
    assert readable(files) == expected


def test_a_decompression_bomb_in_a_folder_is_skipped_in_memory_and_streamed_alike(tmp_path, monkeypatch):
    """An image whose header claims more pixels than PIL's bomb limit: the in-memory path raised PIL's
    DecompressionBombError (a traceback); both paths now skip and list it, and keep the same images."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL refuses above twice the limit: 32 x 32 here
    tree = noise_tree(tmp_path / "tree", 6, 16, "ab")
    Image.new("RGB", (40, 40)).save(tree / "a" / "bomb.png")
    memory = load_splits(tree_recipe(tmp_path, tree, "data.test_fraction=0", "data.val_fraction=0").data)
    streamed = load_splits(tree_recipe(tmp_path, tree, "data.test_fraction=0", "data.val_fraction=0", "data.stream=true").data)  # fmt: skip
    for splits in (memory, streamed):
        assert [Path(s).name for s in splits.skipped] == ["bomb.png"] and len(splits.train.labels) == 12
    assert torch.equal(memory.train.tensor(), streamed.train.tensor())


def test_auto_streams_above_the_memory_cap_and_stream_needs_a_folder(tmp_path, capsys):
    tree = noise_tree(tmp_path / "tree", 10, 16)  # 30 images x 3 x 16 x 16 = 22.5 KB decoded
    assert not load_splits(tree_recipe(tmp_path, tree).data).train.streamed
    capped = load_splits(tree_recipe(tmp_path, tree, "data.memory_cap_mb=1", "data.image_size=256").data)
    assert capped.train.streamed and "streaming 30 images from disk" in capsys.readouterr().err
    with pytest.raises(UserError, match="data.stream: true streams image folders and shards; digits is held in memory"):
        load_splits(make_recipe(tmp_path / "runs", "data.stream=true").data)


def test_a_streamed_run_learns_and_a_mid_epoch_resume_is_exact(tmp_path):
    tree = noise_tree(tmp_path / "tree", 40, 16)
    family = get_family("image_classification")
    overrides = (
        "data.stream=true",
        "data.workers=1",
        "train.epochs=3",
        "train.batch_size=16",
        "data.augment.hflip=true",
    )
    recipe = tree_recipe(tmp_path, tree, *overrides)
    straight = make_run(recipe, "straight")
    result = family.train(recipe, straight)
    assert result["accuracy"] >= 0.8, result  # three brightness levels: easy once the images arrive
    assert_resumes_exactly(family, recipe, straight, batch=2)


def test_a_file_that_breaks_mid_run_fails_the_run_naming_it_and_resume_finishes_once_it_is_mended(tmp_path):
    """A streamed file whose header reads but whose body does not is found only when a batch decodes it: the
    run stops with one line naming the file and its status says failed (it said diverged, the loss's word,
    or finished when the file sat in the test split scored after training). Mended, `resume` goes on from
    the last checkpoint; a run that had finished training writes its report."""
    family = get_family("image_classification")
    for split, cls in (("train", "a"), ("test", "b")):
        tree = tmp_path / split / "tree"
        noise_tree(tree / "train", 12, 16, "ab")
        noise_tree(tree / "test", 4, 16, "ab", seed=1)
        broken = tree / split / cls / "1.png"
        whole = broken.read_bytes()
        broken.write_bytes(whole[:60])  # the header and the start of the pixels: listed as readable
        recipe = tree_recipe(
            tmp_path / split, tree, "data.stream=true", "train.epochs=2", "train.batch_size=8",
            "data.normalize=none", "train.precision=fp32",  # no streamed pass before training: an epoch finds it
        )  # fmt: skip
        run = make_run(recipe, "broken")
        with pytest.raises(UserError, match=rf"cannot decode image .*{split}/{cls}/1.png"):
            family.train(recipe, run)
        meta = json.loads((run.dir / "run.json").read_text())
        assert meta["status"] == "failed" and f"{split}/{cls}/1.png" in meta["error"], meta
        broken.write_bytes(whole)
        if split == "test":
            result = family.train(recipe, run, resume=True)
            assert result["status"] == "finished" and (run.dir / "report.json").is_file(), result
            assert json.loads((run.dir / "run.json").read_text())["status"] == "finished"


def make_run(recipe, name):
    from nnrecipe.runs import create_run

    return create_run(recipe, name)


DATA_MEMORY = """
import json, sys
from nnrecipe.data.loader import TensorLoader
from nnrecipe.recipe import load_recipe
from nnrecipe.tasks.image_inputs import image_spec, splits_of
def kb(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])
def epoch(recipe):
    splits = splits_of(recipe)
    image_spec(recipe, splits)  # the normalisation statistics: one pass over the training images
    loader = TensorLoader(splits.train.images, splits.train.labels, 32, shuffle=True, seed=0)
    return sum(len(y) for _, y in loader.batches(0))  # one training epoch's batches, as the engine draws them
tree, warm, *sets = sys.argv[2:]
warm_sets = [s.replace("stream=auto", "stream=true") for s in sets]  # the same path, on a tiny set
epoch(load_recipe(sys.argv[1], [f"data.path={warm}", *warm_sets]))  # every lazy import (scikit-learn, PIL...)
recipe = load_recipe(sys.argv[1], [f"data.path={tree}", *sets])
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here
base = kb("VmRSS:")
seen = epoch(recipe)
print(json.dumps({"growth_mb": (kb("VmHWM:") - base) / 1024, "seen": seen}))
"""


@pytest.mark.slow
def test_streamed_data_stays_below_the_memory_cap_that_in_memory_data_passes(tmp_path):
    """4,500 noise PNGs decoded at 64 x 64 RGB hold 53 MB; the cap is 32 MB. Loading the splits, computing the
    normalisation statistics and drawing one epoch of training batches raises the peak resident memory by
    more than the decoded set in memory, and by less than the cap streamed (measured, one process each)."""
    tree = noise_tree(tmp_path / "tree", 1500, 64)
    warm = noise_tree(tmp_path / "warm", 10, 64)  # the same code path once first, on a tiny set
    decoded_mb = 4500 * 3 * 64 * 64 / 2**20
    growth = {}
    for stream in ("false", "auto"):
        args = [ROOT / "recipes/digits-convnet.yaml", tree, warm, "data.source=imagefolder"]
        args += ["data.image_size=64", f"data.stream={stream}", "data.memory_cap_mb=32"]
        res = subprocess.run(
            [sys.executable, "-c", DATA_MEMORY, *map(str, args)], capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, res.stderr[-3000:]
        row = json.loads(res.stdout.strip().splitlines()[-1])
        growth[stream] = row["growth_mb"]
        assert row["seen"] > 3000 and ("streaming 4,500 images" in res.stderr) == (stream == "auto")
    print(
        f"peak memory growth: in memory {growth['false']:.0f} MB, streamed {growth['auto']:.0f} MB; set {decoded_mb:.0f} MB"
    )
    assert growth["false"] > decoded_mb and growth["auto"] < 32, growth
