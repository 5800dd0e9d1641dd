"""Hidden names in an image tree (`.ipynb_checkpoints`, `.thumbnails`, macOS's `._photo.png` resource forks)
are not classes and not images: the folder became a class, its thumbnails images of the set (a thumbnail in
val of a photo in train is a leak) and the resource forks "unreadable files" in every report."""

from __future__ import annotations

import shutil

from tests.test_stream import noise_tree, tree_recipe

from nnrecipe.data.images import image_inputs, load_splits
from nnrecipe.data.shards import pack_image_folder


def with_hidden_names(tree):
    (tree / ".ipynb_checkpoints").mkdir()
    shutil.copy(tree / "a" / "0.png", tree / ".ipynb_checkpoints" / "0-checkpoint.png")
    (tree / "a" / ".thumbnails").mkdir()
    shutil.copy(tree / "a" / "1.png", tree / "a" / ".thumbnails" / "1.png")
    (tree / "b" / "._2.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    return tree


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path):
    tree = with_hidden_names(noise_tree(tmp_path / "tree", 10, 12))
    for stream in ("false", "true"):
        splits = load_splits(tree_recipe(tmp_path, tree, f"data.stream={stream}").data)
        assert splits.classes == ["a", "b", "c"] and splits.skipped == [], (splits.classes, splits.skipped)
        assert sum(len(p.labels) for p in (splits.train, splits.val, splits.test) if p is not None) == 30
    assert len(image_inputs([str(tree)])) == 30  # predict on a folder
    pack_image_folder(tree, tmp_path / "packed")
    packed = load_splits(tree_recipe(tmp_path, tmp_path / "packed", "data.source=shards").data)
    assert (
        packed.classes == ["a", "b", "c"]
        and len(packed.train.labels) + len(packed.val.labels) + len(packed.test.labels) == 30
    )


def test_a_language_models_text_folder_skips_hidden_copies(tmp_path):
    """Jupyter's .ipynb_checkpoints/<file>-checkpoint.txt was read as a second copy of the text."""
    from nnrecipe.data.lm import read_text

    (tmp_path / "texts" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "texts" / "a.txt").write_text("to be")
    (tmp_path / "texts" / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("to be")
    (tmp_path / "texts" / ".notes.txt").write_text("scratch")
    assert read_text(tmp_path / "texts") == "to be"
