"""Image classification end to end on real (embedded) data: it learns, reports honestly, transfers."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from tests.conftest import write_digit_tree

from nnrecipe.data.augment import BatchAugment
from nnrecipe.data.images import load_splits
from nnrecipe.engine.checkpoint import load_checkpoint, split_prefix
from nnrecipe.engine.loop import Callback
from nnrecipe.errors import UserError
from nnrecipe.tasks import get_family
from nnrecipe.tasks.image_recipe import Augment

task = get_family("image_classification")


def test_convnet_learns_digits_and_writes_the_report(recipe_factory, new_run):
    recipe = recipe_factory("train.epochs=8", "track.plots=true", "track.tensorboard=true")
    run = new_run(recipe)
    result = task.train(recipe, run)
    assert result["accuracy"] >= 0.95
    report = json.loads((run.dir / "report.json").read_text())["test"]
    cm = np.array(report["confusion_matrix"])
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert report["examples"] == cm.sum() == 360
    assert set(report["per_class"]) == {str(i) for i in range(10)}
    assert {"precision", "recall", "f1-score"} <= set(report["macro_avg"])
    for name in ("curves.png", "confusion_test.png"):
        assert (run.dir / "plots" / name).stat().st_size > 1000
    assert "| macro avg |" in (run.dir / "report.md").read_text()
    assert list((run.dir / "tensorboard").iterdir()), "TensorBoard event files expected"
    assert json.loads((run.dir / "run.json").read_text())["status"] == "finished"

    # evaluate on other data in the run's format: an ImageFolder tree of (upscaled RGB) digit images.
    tree = write_digit_tree(run.dir.parent / "more_digits", list(range(10)), per_class=5, offset=150)
    summary = task.evaluate(run, data_path=str(tree))
    assert summary["examples"] == 50 and summary["accuracy"] > 0.7
    assert f"data:{tree}" in json.loads((run.dir / "report.json").read_text())
    loose = shutil.copytree(tree / "3", run.dir.parent / "loose")  # images, no class folders: "no image files"
    with pytest.raises(UserError, match=r"loose: images directly in it \(.*\.png, ...\); .* a folder per class"):
        task.evaluate(run, data_path=str(loose))

    files = sorted(str(p) for p in (tree / "3").glob("*.png"))
    preds = task.predict(run, files)
    assert sum(p["label"] == "3" for p in preds) >= 4
    assert all(abs(sum(p["top"].values()) - 1) < 0.5 and 0 < p["confidence"] <= 1 for p in preds)


def test_predict_reports_unreadable_images(recipe_factory, new_run, tmp_path):
    recipe = recipe_factory("train.epochs=1", "train.eval_batch_size=4")
    run = new_run(recipe)
    task.train(recipe, run)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot decode image .*bad.png"):
        task.predict(run, [str(bad)])
    with pytest.raises(UserError, match="image not found: .*nope.png"):
        task.predict(run, [str(tmp_path / "nope.png")])
    with pytest.raises(UserError, match="an empty input"):  # Path(""): every image under the current folder
        task.predict(run, [""])
    # A folder stands for the images under it (it was "image not found"), read a batch at a time.
    tree = write_digit_tree(tmp_path / "tree", [3, 4], per_class=3)
    (tree / "notes.txt").write_text("not an image")
    rows = task.predict(run, [str(tree)])  # train.eval_batch_size 4: two batches
    assert [r["file"] for r in rows] == sorted(str(p) for p in tree.rglob("*.png")) and len(rows) == 6
    alone = task.predict(run, [rows[5]["file"]])[0]
    assert alone["label"] == rows[5]["label"] and alone["confidence"] == pytest.approx(rows[5]["confidence"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: a folder without image files"):
        task.predict(run, [str(tmp_path / "empty")])


def test_imagefolder_skips_and_lists_corrupt_files(recipe_factory, tmp_path):
    tree = write_digit_tree(tmp_path / "tree", [0, 1], per_class=10)
    (tree / "1" / "broken.png").write_bytes(b"\x89PNG garbage")
    recipe = recipe_factory("data.source=imagefolder", f"data.path={tree}")
    splits = load_splits(recipe.data)
    assert [p.endswith("broken.png") for p in splits.skipped] == [True]
    assert sum(len(s) for s in (splits.train, splits.val, splits.test)) == 20
    assert splits.train.images.shape[1:] == (3, 16, 16)


def test_a_tree_read_again_is_not_decoded_again_until_a_file_changes(recipe_factory, tmp_path, monkeypatch):
    """Continual stages and their scoring re-read one tree many times in a process: decoded once, the
    splits equal; an image rewritten (or one skipped) is seen on the next read."""
    import nnrecipe.data.images as images

    tree = write_digit_tree(tmp_path / "tree", [0, 1], per_class=10)
    (tree / "1" / "broken.png").write_bytes(b"\x89PNG garbage")
    decoded = []
    real_probe, real_decode = images.read_image, images.decode_tree
    monkeypatch.setattr(images, "read_image", lambda path, *a: decoded.append(path) or real_probe(path, *a))
    monkeypatch.setattr(images, "decode_tree", lambda files, *a: decoded.extend(files) or real_decode(files, *a))
    recipe = recipe_factory("data.source=imagefolder", f"data.path={tree}")
    first, second = load_splits(recipe.data), load_splits(recipe.data)
    # every file once (the broken one once more, by PIL, which names it), two one-file probes of the shape;
    # the second read: none
    assert len(decoded) == 21 + 1 + 2
    assert torch.equal(first.train.images, second.train.images) and second.skipped == first.skipped != []
    (tree / "1" / "broken.png").unlink()
    write_digit_tree(tmp_path / "other", [1], per_class=1)
    moved = next((tmp_path / "other" / "1").iterdir())
    moved.rename(tree / "0" / moved.name)  # a "0" image that is a 1: a changed tree
    third = load_splits(recipe.data)
    assert len(decoded) > 24 + 2 and third.skipped == []
    assert sum(len(s) for s in (third.train, third.val, third.test)) == 21


def test_an_old_trees_listing_is_kept_until_a_folder_changes(tmp_path, monkeypatch):
    """A continual run lists one 50,000-file tree dozens of times: an unchanged tree is walked once, and a file
    added, removed or renamed (its folder's mtime moves) is seen on the next listing."""
    import os

    import nnrecipe.data.images as images

    tree = write_digit_tree(tmp_path / "tree", [0, 1], per_class=3)
    hour_ago = time.time() - 3600
    for folder in (tree, tree / "0", tree / "1"):
        os.utime(folder, (hour_ago, hour_ago))
    walks = []
    real = os.walk
    monkeypatch.setattr(images.os, "walk", lambda top, *a, **k: walks.append(top) or real(top, *a, **k))
    first = images.list_image_files(tree, ["0", "1"])
    assert images.list_image_files(tree, ["0", "1"]) == first and len(walks) == 2  # one walk per class folder
    (tree / "1" / "extra.png").write_bytes((tree / "1" / first[0][-1].name).read_bytes())
    files, labels = images.list_image_files(tree, ["0", "1"])
    assert len(walks) == 4 and len(files) == 7 and labels.count(1) == 4
    assert [str(f) for f in files] == sorted(str(f) for f in files)


def test_missing_data_gives_clear_errors(recipe_factory, tmp_path):
    r = recipe_factory("data.source=imagefolder", f"data.path={tmp_path / 'nowhere'}")
    with pytest.raises(UserError, match="data.path: folder not found: .*nowhere"):
        load_splits(r.data)
    one = write_digit_tree(tmp_path / "one", [3], per_class=5)  # a one-class classifier trained, learning nothing
    with pytest.raises(UserError, match=r"data.path: .*one has one class subfolder \(3\); a classifier needs two"):
        load_splits(recipe_factory("data.source=imagefolder", f"data.path={one}").data)
    (one / "7").mkdir()  # a class no image trains: never predicted
    with pytest.raises(UserError, match=r"data.path: no readable images in the class folder\(s\) 7 of"):
        load_splits(recipe_factory("data.source=imagefolder", f"data.path={one}").data)
    (tmp_path / "images.zip").write_bytes(b"PK")  # a file where the tree belongs: it was 'not found'
    r = recipe_factory("data.source=imagefolder", f"data.path={tmp_path / 'images.zip'}")
    with pytest.raises(UserError, match="data.path: folder is a file, not a folder: .*images.zip"):
        load_splits(r.data)
    r = recipe_factory("data.source=cifar10", f"data.path={tmp_path}", "data.download=false")
    with pytest.raises(UserError) as e:
        load_splits(r.data)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)


def test_transfer_learning_from_one_dataset_to_another(recipe_factory, new_run, tmp_path):
    """Pre-train on digits 0-4, fine-tune a frozen backbone on 5-7, then unfreeze it at a lower LR."""
    source = write_digit_tree(tmp_path / "src", [0, 1, 2, 3, 4], per_class=60)
    target = write_digit_tree(tmp_path / "dst", [5, 6, 7], per_class=40)
    common = ("data.source=imagefolder", "data.val_fraction=0.2", "data.test_fraction=0.25", "optim.lr=0.02")
    pre = recipe_factory(*common, f"data.path={source}", "train.epochs=6")
    pre_run = new_run(pre, "pre")
    assert task.train(pre, pre_run)["accuracy"] > 0.9

    fine = recipe_factory(
        *common,
        f"data.path={target}",
        f"model.init_from={pre_run.dir}",
        "model.freeze=backbone",
        "model.unfreeze_at_epoch=2",
        "model.backbone_lr_scale=0.1",
        "train.epochs=5",
        "train.batch_size=16",
    )
    fine_run = new_run(fine, "fine")
    snapshots = []

    class Snapshot(Callback):
        def on_epoch_start(self, epoch, model):
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    result = task.train(fine, fine_run, callbacks=[Snapshot()])
    pretrained = split_prefix(load_checkpoint(pre_run.best_checkpoint)[0], "model")
    # Epoch 0 starts from the pretrained backbone with a new 3-class head.
    assert torch.equal(snapshots[0]["0.weight"], pretrained["0.weight"])
    assert snapshots[0]["10.weight"].shape[0] == 3
    # Frozen for epochs 0-1 (backbone unchanged, head trained), unfrozen from epoch 2.
    assert torch.equal(snapshots[2]["0.weight"], pretrained["0.weight"])
    assert not torch.equal(snapshots[2]["10.weight"], snapshots[0]["10.weight"])
    final = split_prefix(load_checkpoint(fine_run.last_checkpoint)[0], "model")
    assert not torch.equal(final["0.weight"], pretrained["0.weight"])
    assert result["accuracy"] >= 0.85


def test_augmentation_draws_per_image_and_is_reproducible():
    x = torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8).repeat(64, 1, 1, 1)
    aug = BatchAugment(Augment(crop_padding=2, hflip=True, rotation=15), image_size=8)
    a, b, c = aug(x, seed=1), aug(x, seed=1), aug(x, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    distinct = {img.numpy().tobytes() for img in a}
    assert len(distinct) > 20, "each image gets its own crop/flip/rotation"
    state = torch.get_rng_state()
    aug(x, seed=3)
    assert torch.equal(state, torch.get_rng_state()), "augmentation must not consume the global RNG"


def test_crop_with_padding_matches_torchvision_for_the_same_offsets():
    from torchvision.transforms.v2 import functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    aug = BatchAugment(Augment(crop_padding=2), image_size=8)
    out = aug(x, seed=5)
    rg = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 5, (16, 1), generator=rg)
    dx = torch.randint(0, 5, (16, 1), generator=rg)
    for i in range(16):
        expected = F.crop(F.pad(x[i], [2, 2, 2, 2]), int(dy[i]), int(dx[i]), 8, 8)
        assert torch.equal(out[i], expected)


def test_a_terminal_shows_a_bar_while_an_image_tree_is_decoded(monkeypatch, tmp_path):
    """A large ImageFolder tree took a minute or more to decode before training, without a sign of life."""
    import io

    from rich.console import Console
    from tests.conftest import write_digit_tree

    from nnrecipe.data.images import read_image_tree
    from nnrecipe.engine import loop

    write_digit_tree(tmp_path / "tree", [0, 1, 2], per_class=10)
    classes = ["0", "1", "2"]
    out = io.StringIO()
    monkeypatch.setattr(loop, "console", Console(file=out, force_terminal=True, width=100))
    part = read_image_tree(tmp_path / "tree", classes, 1, 8, [])
    assert "decoding tree" in out.getvalue() and f"{len(part)}/{len(part)}" in out.getvalue()
    monkeypatch.setenv("RANK", "1")  # every process of a DDP run decodes its tree; the main one alone draws
    out.truncate(0)
    read_image_tree(tmp_path / "tree", classes, 1, 16, [])  # another size: decoded again, not from the cache
    assert out.getvalue() == ""


def test_a_terminal_shows_a_bar_while_predicting_on_a_folder(trained_digits_run, monkeypatch, tmp_path):
    """A folder of many images was classified for minutes without a sign of life; the bar changes no row."""
    import io

    from rich.console import Console
    from tests.test_serve import digit_png

    from nnrecipe.engine import loop

    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(digit_png(i))

    quiet = task.predict(trained_digits_run, [str(tmp_path)])
    out = io.StringIO()
    monkeypatch.setattr(loop, "console", Console(file=out, force_terminal=True, width=80))
    shown = task.predict(trained_digits_run, [str(tmp_path)])
    assert shown == quiet and "predicting" in out.getvalue() and "5/5" in out.getvalue()


def test_a_broken_file_in_a_predicted_folder_is_skipped_with_a_word(trained_digits_run, tmp_path, capsys):
    """One broken file among many stopped the whole prediction with nothing written; a file named on its own
    that cannot be read is still an error, and so is a folder of nothing but broken files."""
    from tests.test_serve import digit_png

    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(digit_png(i))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = task.predict(trained_digits_run, [str(tmp_path)])
    assert [r["file"] for r in rows] == [str(tmp_path / f"{i}.png") for i in range(3)]
    assert f"skipped 1 unreadable file(s) in {tmp_path}" in capsys.readouterr().err
    with pytest.raises(UserError, match="cannot decode image .*broken.png"):
        task.predict(trained_digits_run, [str(tmp_path / "broken.png")])
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.png").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"only: none of its 1 image file\(s\) can be read"):
        task.predict(trained_digits_run, [str(tmp_path / "only")])
