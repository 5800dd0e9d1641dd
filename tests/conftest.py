"""Shared fixtures: small recipes on the embedded digits set, written into a temporary runs folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnrecipe.recipe import apply_override, validate_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

# train.precision auto would otherwise time bf16 against fp32 on CPUs with bf16 units, and the suite's
# results would depend on the clock; tests/test_precision_probe.py turns it back on where it is the subject.
os.environ["NNRECIPE_PRECISION_PROBE"] = "off"

# Under pytest-xdist (`make test` runs two workers), each worker and the processes it starts get an equal share
# of the cores: two workers of two threads each on two cores would spin against each other.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _share
    import torch

    torch.set_num_threads(int(_share))


def make_recipe(runs_dir: Path, *overrides: str, **sections):
    raw = {
        "data": {"source": "digits"},
        "model": {"name": "convnet"},
        "train": {"epochs": 2, "batch_size": 64, "seed": 0},
        "track": {"runs_dir": str(runs_dir), "progress": False, "plots": False, "tensorboard": False},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw)


@pytest.fixture
def recipe_factory(tmp_path):
    return lambda *overrides, **sections: make_recipe(tmp_path / "runs", *overrides, **sections)


@pytest.fixture
def new_run():
    return lambda recipe, name="test": create_run(recipe, name)


def write_digit_tree(root: Path, classes: list[int], per_class: int = 40, size: int = 16, offset: int = 0) -> Path:
    """An ImageFolder tree of real digit images (upscaled, RGB PNG) for the chosen digit classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(d.target == c)[offset : offset + per_class]
        for i in idx:
            img = Image.fromarray(np.rint(d.images[i] * 255 / 16).astype(np.uint8)).resize((size, size), Image.NEAREST)
            img.convert("RGB").save(root / str(c) / f"{i}.png")
    return root


def in_process(*args) -> tuple[int, str]:
    """(exit code, output) of `nnrecipe ARGS` run in this process, for verbs whose subject is not the process
    itself (a subprocess costs 5-8 s of imports here). A user error is raised out of the app (main() prints
    it as one line): its text ends the output, and the code is the one main() exits with."""
    from typer.testing import CliRunner

    from nnrecipe.cli import app
    from nnrecipe.errors import UserError

    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, UserError):
        return result.exception.exit_code, result.output + str(result.exception)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="session")
def trained_digits_run(tmp_path_factory):
    """A ConvNet trained 6 epochs on digits, shared by the export and serving tests."""
    recipe = make_recipe(tmp_path_factory.mktemp("runs"), "train.epochs=6")
    run = create_run(recipe, "digits")
    get_family("image_classification").train(recipe, run)
    return run


@pytest.fixture(scope="session")
def trained_text_run(tmp_path_factory):
    """MiniLM fine-tuned on the toy sentiment set, shared by the text export and serving tests."""
    from tests.test_text_classification import text_recipe

    recipe = text_recipe(tmp_path_factory.mktemp("text"))
    run = create_run(recipe, "text")
    get_family("text_classification").train(recipe, run)
    return run


@pytest.fixture(scope="session")
def trained_ner_run(tmp_path_factory):
    """MiniLM fine-tuned on the toy NER set, shared by the NER export and serving tests."""
    from tests.test_token_classification import ner_recipe

    recipe = ner_recipe(tmp_path_factory.mktemp("ner"))
    run = create_run(recipe, "ner")
    get_family("token_classification").train(recipe, run)
    return run
