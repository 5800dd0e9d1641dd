"""nnrecipe doctor: a correct recipe passes every check; each planted bug is caught by its check alone."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from tests.conftest import write_digit_tree
from torch import nn

from nnrecipe import models
from nnrecipe.doctor.run import run_doctor
from nnrecipe.models.small_cnn import convnet
from nnrecipe.tasks import get_family


def batch_mixing_convnet(num_classes, in_channels, image_size, dropout=0.0):
    """The classic ConvNet with a planted bug: features are centred over the batch axis."""
    net = convnet(num_classes, in_channels, image_size, dropout)

    class Mixing(nn.Module):
        def forward(self, x):
            return x - 0.1 * x.mean(0, keepdim=True)

    return nn.Sequential(*net[:7], Mixing(), *net[7:])


def detached_convnet(num_classes, in_channels, image_size, dropout=0.0):
    """The classic ConvNet with a planted bug: the convolutional features are detached from the graph."""
    net = convnet(num_classes, in_channels, image_size, dropout)

    class Detach(nn.Module):
        def forward(self, x):
            return x.detach()

    return nn.Sequential(*net[:7], Detach(), *net[7:])


def verdicts(results):
    return {r.number: r.verdict for r in results}


def not_passing(results):
    return {r.number: r.verdict for r in results if r.verdict != "pass"}


@pytest.fixture(autouse=True)
def planted_models(monkeypatch):
    """Register the broken models for this module's tests only (the registry is global)."""
    models.model_names()  # load the built-ins first
    for fn in (batch_mixing_convnet, detached_convnet):
        monkeypatch.setitem(models._REGISTRY, fn.__name__, fn)


@pytest.fixture
def doctor(recipe_factory, tmp_path):
    def run(*overrides):
        recipe = recipe_factory("optim.lr=0.05", "data.augment.crop_padding=1", *overrides)
        return run_doctor(recipe, tmp_path / "doctor")

    return run


def test_a_correct_recipe_passes_every_check_and_writes_the_report(doctor, tmp_path):
    results = doctor()
    assert not_passing(results) == {}, [(r.number, r.figure, r.advice) for r in results if r.verdict != "pass"]
    report = (tmp_path / "doctor" / "report.md").read_text()
    assert report.count("**pass**") == 9 and "*Why:*" in report
    for png in ("batch.png", "lr_range.png"):
        assert (tmp_path / "doctor" / png).stat().st_size > 1000


def test_shuffled_labels_are_caught_by_the_input_independent_baseline(doctor, tmp_path):
    tree = tmp_path / "shuffled"
    write_digit_tree(tree, list(range(5)), per_class=60)
    rng = np.random.default_rng(0)
    files = sorted(tree.rglob("*.png"))
    for f, label in zip(files, rng.permutation([int(f.parent.name) for f in files])):
        if int(f.parent.name) != label:
            shutil.move(str(f), tree / str(label) / f"x{f.name}")
    results = doctor("data.source=imagefolder", f"data.path={tree}")
    assert not_passing(results) == {4: "warn"}, [(r.number, r.figure) for r in results]


def test_a_model_that_mixes_the_batch_fails_batch_independence(doctor):
    assert not_passing(doctor("model.name=batch_mixing_convnet")) == {6: "fail"}


def test_a_learning_rate_100x_too_high_warns_the_range_test_and_fails_overfitting(doctor):
    assert not_passing(doctor("optim.lr=5.0")) == {5: "fail", 7: "warn"}


def test_a_model_with_detached_layers_fails_gradient_health(doctor):
    results = doctor("model.name=detached_convnet")
    assert not_passing(results) == {8: "fail"}
    assert "0.weight" in next(r for r in results if r.number == 8).advice


def test_duplicates_across_train_and_test_fail_the_data_check(doctor, tmp_path):
    root = tmp_path / "dups"
    write_digit_tree(root / "train", [0, 1, 2], per_class=40)
    write_digit_tree(root / "test", [0, 1, 2], per_class=10, offset=100)
    for c in (0, 1, 2):  # replace 20% of the test set by copies of training images
        for i, src in enumerate(sorted((root / "train" / str(c)).glob("*.png"))[:2]):
            shutil.copy(src, root / "test" / str(c) / f"dup{i}.png")
            sorted((root / "test" / str(c)).glob("[0-9]*.png"))[0].unlink()
    results = doctor("data.source=imagefolder", f"data.path={root}")
    assert not_passing(results) == {1: "fail"}, [(r.number, r.figure) for r in results]
    assert "exact copies of training images" in results[0].advice


def test_evaluation_subset_is_not_the_first_classes_of_a_class_ordered_split(recipe_factory, tmp_path):
    """Regression: the doctor once evaluated the first N validation images, which in an ImageFolder split
    are a few classes only; a constant prediction then scored 39% on CIFAR-10 and check 4 warned."""
    from nnrecipe.tasks import image_doctor as image

    tree = write_digit_tree(tmp_path / "tree", list(range(5)), per_class=40)
    recipe = recipe_factory("data.source=imagefolder", f"data.path={tree}", "data.val_fraction=0.25")
    splits, spec = image.prepare(recipe)
    subject = image.make_subject(recipe, splits, spec, max_eval=12)
    labels = torch.cat([y for _, y in subject.val_batches])
    assert len(labels) == 12 and len(set(labels.tolist())) >= 4


def test_a_correct_text_recipe_passes_and_copied_test_rows_fail_the_data_check(tmp_path):
    from tests.test_text_classification import NEG, NOUNS, POS, text_recipe

    recipe = text_recipe(tmp_path, "train.batch_size=8")  # writes the toy files, replaced below; 8: the same
    # verdicts as 16, each MiniLM step about half the time
    rng = np.random.default_rng(0)
    for name, n in (("train.tsv", 240), ("test.tsv", 80)):  # unique texts: the toy writer repeats sentences
        offset = 0 if name == "train.tsv" else 10_000
        rows = [
            f"review {offset + i}: the {rng.choice(NOUNS)} is {rng.choice(POS if i % 2 else NEG)}\t{'pos' if i % 2 else 'neg'}"
            for i in range(n)
        ]
        (tmp_path / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    recipe.data.train, recipe.data.test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    results = run_doctor(recipe, tmp_path / "doc")
    assert not_passing(results) == {}, [(r.number, r.verdict, r.figure) for r in results if r.verdict != "pass"]
    assert (tmp_path / "doc" / "batch.txt").read_text().startswith("[")
    lines = (tmp_path / "train.tsv").read_text().splitlines()
    (tmp_path / "test.tsv").write_text("\n".join(lines[:1] + lines[1:41]) + "\n")  # the test set copied from train
    recipe.data.test = tmp_path / "test.tsv"
    # The model checks already passed above and read no test rows: only the data check can change.
    (tmp_path / "doc2").mkdir()
    data_check = get_family("text_classification").doctor(recipe).data_checks[0](tmp_path / "doc2")
    assert data_check.number == 1 and data_check.verdict == "fail"


def test_ner_recipe_passes_the_model_checks_and_its_copied_test_sentences_fail_the_data_check(tmp_path):
    from tests.test_token_classification import ner_recipe

    from nnrecipe.doctor.run import run_doctor

    results = {r.number: r for r in run_doctor(ner_recipe(tmp_path, "train.batch_size=8"), tmp_path / "doctor")}
    assert results[1].verdict == "fail" and "exact copies of training sentences" in results[1].advice
    assert {n: r.verdict for n, r in results.items() if n in (2, 4, 5, 6, 8, 9)} == dict.fromkeys(
        (2, 4, 5, 6, 8, 9), "pass"
    )
    # A fresh token head is near-uniform over 5 tags while 60% of the toy tokens are O: check 3 says so.
    assert "class-prior entropy" in results[3].figure
    assert "/B-PER" in (tmp_path / "doctor" / "batch.txt").read_text()


def test_a_refused_recipe_leaves_no_report_folder(recipe_factory, tmp_path):
    """The report folder was made before the family or its data were checked: an RL recipe, or a data file
    that is missing, left an empty doctor/ folder behind."""
    from nnrecipe.doctor.run import check_report_folder
    from nnrecipe.errors import UserError
    from nnrecipe.recipe import validate_recipe

    for recipe in (
        validate_recipe({"task": "rl", "env": {"id": "CartPole-v1"}, "algo": "dqn"}),
        recipe_factory("data.source=imagefolder", f"data.path={tmp_path / 'missing'}"),
    ):
        with pytest.raises(UserError):
            run_doctor(recipe, tmp_path / "doctor")
        assert not (tmp_path / "doctor").exists()
    # --out runs/<run> replaced the run's own report; an earlier doctor's folder is written again.
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "report.md").write_text("# Report: a run\n")
    with pytest.raises(UserError, match="--out .*run: holds other files; give a new or empty folder"):
        run_doctor(recipe_factory(), run_folder)
    assert (run_folder / "report.md").read_text() == "# Report: a run\n"
    (run_folder / "report.md").write_text("# nnrecipe doctor\n\nearlier\n")
    check_report_folder(run_folder)
