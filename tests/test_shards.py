"""Pre-packed shards (`nnrecipe pack`, `data.source: shards`): the shards are plain WebDataset tars, a run
from them sees the image folder's images in the same order, a mid-epoch resume is exact, they read from
an fsspec URL as from a folder, and every way a packed set can be broken gets a one-line error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import make_recipe
from tests.test_resume import assert_resumes_exactly
from tests.test_stream import make_run, noise_tree

from nnrecipe.data.images import load_splits
from nnrecipe.data.loader import TensorLoader
from nnrecipe.data.shards import pack_image_folder
from nnrecipe.errors import UserError
from nnrecipe.tasks import get_family


def split_tree(root: Path) -> Path:
    """train/ and test/ parts, one JPEG class among PNG ones, and one file that is not an image."""
    noise_tree(root / "train", 40, 20, "ab")
    noise_tree(root / "test", 6, 20, "ab", seed=1)
    (root / "train" / "c").mkdir()
    rng = np.random.default_rng(2)
    for i in range(40):
        Image.fromarray(rng.integers(200, 255, (20, 20, 3), dtype=np.uint8)).save(root / "train" / "c" / f"{i}.jpg")
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    return root


def recipe_for(tmp_path, *overrides):
    return make_recipe(tmp_path / "runs", "data.image_size=16", "model.name=convnet", *overrides)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    tree = split_tree(root / "tree")
    done = pack_image_folder(tree, root / "packed", shard_mb=0.02)  # ~20 KB shards: several per split
    return tree, root / "packed", done


def test_pack_writes_webdataset_tars_whose_index_points_at_each_image(packed):
    tree, out, done = packed
    assert done["samples"] == 3 * 40 + 2 * 6 and done["classes"] == ["a", "b", "c"]
    assert done["skipped"] == [str(tree / "train" / "a" / "broken.png")]
    shards = json.loads((out / "shards.json").read_text())["shards"]  # in writing order: index.npz numbers them
    assert done["shards"] == len(shards) == len(list(out.glob("*.tar"))) > 2
    assert {name.split("-")[0] for name in shards} == {"train", "test"} and not list(out.glob("*.tmp"))
    index = np.load(out / "index.npz")
    members = {}
    for shard in shards:
        with tarfile.open(out / shard) as tar:  # what the webdataset library reads: <key>.<ext>, <key>.cls
            for m in tar:
                members[(shard, m.name)] = (m.offset_data, m.size, tar.extractfile(m).read())
    assert len(members) == 2 * done["samples"]
    for i in range(done["samples"]):
        shard = shards[index["shard"][i]]
        image = next(v for (s, name), v in members.items() if s == shard and name.startswith(f"{i:09d}."))
        label = members[(shard, f"{i:09d}.cls")][2]
        assert (index["offset"][i], index["size"][i]) == image[:2] and int(label) == index["label"][i]
    # The bytes are the files' own: the first training image of class c is the first JPEG.
    first_c = int(np.flatnonzero(index["label"] == 2)[0])
    jpeg = (tree / "train" / "c" / "0.jpg").read_bytes()
    assert members[(shards[index["shard"][first_c]], f"{first_c:09d}.jpg")][2] == jpeg


def test_shards_give_the_folders_images_in_the_same_order_in_memory_and_streamed(tmp_path, packed):
    tree, out, _ = packed
    folder = load_splits(recipe_for(tmp_path, "data.source=imagefolder", f"data.path={tree}").data)
    for stream in ("true", "false"):
        shards = load_splits(
            recipe_for(tmp_path, "data.source=shards", f"data.path={out}", f"data.stream={stream}").data
        )
        assert shards.classes == folder.classes and shards.train.streamed == (stream == "true")
        for name in ("train", "val", "test"):
            a, b = getattr(folder, name), getattr(shards, name)
            assert torch.equal(a.labels, b.labels) and torch.equal(a.tensor(), b.tensor()), name
    a = TensorLoader(folder.train.images, folder.train.labels, 8, shuffle=True, seed=3)
    streamed = load_splits(recipe_for(tmp_path, "data.source=shards", f"data.path={out}", "data.stream=true").data)
    b = TensorLoader(streamed.train.images, streamed.train.labels, 8, shuffle=True, seed=3, workers=1)
    pairs = list(zip(a.batches(1), b.batches(1), strict=True))
    assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in pairs)


def test_a_run_from_an_fsspec_url_learns_and_resumes_exactly(tmp_path, packed):
    _, out, _ = packed
    fs = fsspec.filesystem("memory")
    fs.put(str(out), "/packed", recursive=True)
    try:
        family = get_family("image_classification")
        recipe = recipe_for(
            tmp_path, "data.source=shards", "data.url=memory://packed", "data.stream=true",
            "train.epochs=4", "train.batch_size=16",
        )  # fmt: skip
        straight = make_run(recipe, "straight")
        assert family.train(recipe, straight)["accuracy"] >= 0.8  # brightness levels: easy once the images arrive
        assert_resumes_exactly(family, recipe, straight, batch=2)
    finally:
        fs.rm("/packed", recursive=True)


def test_a_batch_read_at_once_equals_its_samples_read_one_by_one(packed):
    """`read_many` (each local shard opened once; fsspec's cat_ranges for a URL) gives each sample's bytes in
    the order asked, across shards, as `read` does one sample at a time."""
    from nnrecipe.data.shards import open_packed

    _, out, _ = packed
    fs = fsspec.filesystem("memory")
    fs.put(str(out), "/many", recursive=True)
    try:
        for location in (str(out), "memory://many"):
            source = open_packed(location).source
            items = np.random.default_rng(0).permutation(len(source.size)).tolist()
            assert len({int(source.shard[i]) for i in items[:40]}) > 2  # a batch spans several shards
            assert source.read_many(items) == [source.read(i) for i in items], location
    finally:
        fs.rm("/many", recursive=True)


def test_broken_packed_sets_are_named_in_one_line(tmp_path, packed):
    tree, out, _ = packed
    with pytest.raises(UserError, match=r"not a packed set \(shards.json missing\); write one with: nnrecipe pack"):
        load_splits(recipe_for(tmp_path, "data.source=shards", f"data.path={tree}").data)
    with pytest.raises(UserError, match="required for data.source: shards"):
        load_splits(recipe_for(tmp_path, "data.source=shards").data)
    with pytest.raises(UserError, match="already holds a packed set"):
        pack_image_folder(tree, out)
    (tmp_path / "a-file").write_text("not a folder")  # a traceback (FileExistsError) before
    with pytest.raises(UserError, match="a-file is a file; the packed set needs a folder"):
        pack_image_folder(tree, tmp_path / "a-file")
    # The shards were written into any folder: one holding other files (a run), or a class folder of the tree.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "report.md").write_text("a run's report")
    with pytest.raises(UserError, match="busy holds other files; the packed set needs a new or empty folder"):
        pack_image_folder(tree, tmp_path / "busy")
    inside = next(p for p in tree.rglob("*") if p.is_dir())
    with pytest.raises(UserError, match="is inside the image folder"):
        pack_image_folder(tree, inside)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["report.md"] and not list(tree.rglob("*.tar"))
    with pytest.raises(UserError, match="nosuchproto"):
        load_splits(recipe_for(tmp_path, "data.source=shards", "data.url=nosuchproto://x/y").data)
    for name, edit in (("version", {"version": 99}), ("escape", {"shards": ["../../outside.tar"]})):
        forged = tmp_path / name
        shutil.copytree(out, forged)
        meta = json.loads((forged / "shards.json").read_text())
        (forged / "shards.json").write_text(json.dumps(meta | edit))
        with pytest.raises(UserError, match="not an nnrecipe-shards v1 file|plain file names"):
            load_splits(recipe_for(tmp_path, "data.source=shards", f"data.path={forged}").data)
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    last = sorted(cut.glob("train-*.tar"))[-1]
    last.write_bytes(last.read_bytes()[:1000])  # a copy that stopped early
    splits = load_splits(recipe_for(tmp_path, "data.source=shards", f"data.path={cut}", "data.stream=true").data)
    with pytest.raises(UserError, match=rf"{last.name}:\d{{9}}\.(png|jpg): \d+ of its \d+ bytes are in the shard"):
        splits.train.tensor()
    last.unlink()
    with pytest.raises(UserError, match=rf"shard not found: .*{last.name}"):
        splits.train.tensor()


def test_pack_from_the_command_line(tmp_path):
    tree = noise_tree(tmp_path / "tree", 5, 8, "xy")
    res = subprocess.run(
        [sys.executable, "-m", "nnrecipe.cli", "pack", str(tree), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("packed 10 images of 2 classes into 1 shard(s)")  # no bar's blank line in a log
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        names = tar.getnames()
        first = tar.extractfile("000000000.png").read()
    assert names[:2] == ["000000000.png", "000000000.cls"] and len(names) == 20
    assert first == (tree / "x" / "0.png").read_bytes()


def test_pack_names_a_file_given_for_the_folder_and_a_shard_size_it_cannot_use(tmp_path):
    from nnrecipe.data.shards import pack_image_folder

    tree = noise_tree(tmp_path / "tree", 2, 8, "xy")
    with pytest.raises(UserError, match="image folder is a file, not a folder: .*0.png"):
        pack_image_folder(tree / "x" / "0.png", tmp_path / "out")
    with pytest.raises(UserError, match=r"--shard-mb: a positive finite size in MB \(got inf\)"):  # a traceback
        pack_image_folder(tree, tmp_path / "out", shard_mb=float("inf"))
