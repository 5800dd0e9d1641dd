"""A task family defined entirely in this file (a toy classifier of 2-D points in Gaussian blobs), registered,
and driven through the real CLI and server: train, evaluate, predict, export and serve work for it without
touching any other file of the package. If a verb still switched on family names, this would fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
import yaml
from fastapi.testclient import TestClient
from pydantic import Field
from torch import nn
from typer.testing import CliRunner

from nnrecipe.cli import app
from nnrecipe.data.loader import TensorLoader
from nnrecipe.data.splits import holdout
from nnrecipe.engine.checkpoint import load_weights
from nnrecipe.engine.config import Section
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.errors import UserError
from nnrecipe.reporting.classification import classification_summary, write_report
from nnrecipe.runs import Run
from nnrecipe.tasks import outputs
from nnrecipe.tasks.family import Inference, LogitsExport, Metric, Splits, register_family, unregister_family
from nnrecipe.tasks.sections import TrainedRecipe
from nnrecipe.tasks.serving import InputError, Predictor, TextInputs
from nnrecipe.tasks.supervised import Setup, SupervisedFamily


class BlobsData(Section):
    """Points drawn around `centers` Gaussian centres (scikit-learn's make_blobs)."""

    n: int = Field(600, description="Points.")
    centers: int = Field(3, description="Classes.")
    seed: int = Field(0, description="Seed of the draw.")


class BlobsRecipe(TrainedRecipe):
    """Toy 2-D classification."""

    DEFAULTS = {
        "optim": {"name": "adam", "lr": 0.01},
        "schedule": {"name": "constant"},
        "train": {"epochs": 8, "batch_size": 32},
    }
    task: Literal["blobs"] = Field("blobs", description="The task family.")
    data: BlobsData = Field(default_factory=BlobsData)


def mlp(classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, classes))


class CrossEntropy:
    def training_loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y), len(y)

    def evaluate(self, model, loader):
        with torch.no_grad():
            pairs = [(model(x).argmax(1) == y).float() for x, y in loader.batches()]
        return {"accuracy": torch.cat(pairs).mean().item()}


def parse_point(text: str, index: int = 0) -> list[float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"inputs[{index}]: expected 'x,y' (got {text!r})") from None
    return [x, y]


class BlobsFamily(SupervisedFamily):
    name = "blobs"
    recipe = BlobsRecipe
    metric = Metric("accuracy", "max")
    output = outputs.CLASSIFICATION
    card_metrics = ("accuracy", "examples")
    predict_inputs = "texts"

    def splits(self, recipe: BlobsRecipe) -> Splits:
        from sklearn.datasets import make_blobs

        d = recipe.data
        x, y = make_blobs(d.n, centers=d.centers, cluster_std=1.0, random_state=d.seed)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        rest, test = holdout(len(y), 0.2, d.seed, y.tolist())
        train, val = holdout(len(rest), 0.2, d.seed, y[rest].tolist())
        part = lambda idx: (x[idx], y[idx])  # noqa: E731
        return Splits(
            part([rest[i] for i in train]),
            part([rest[i] for i in val]),
            part(test),
            classes=[f"c{i}" for i in range(d.centers)],
        )

    def setup(self, recipe: BlobsRecipe, splits: Splits, acc, run: Run) -> Setup:
        model = mlp(len(splits.classes))
        t = recipe.train
        return Setup(
            model=model,
            optimizer=build_optimizer(model, recipe.optim),
            task=CrossEntropy(),
            train_loader=TensorLoader(*splits.train, t.batch_size, device=acc.device, shuffle=True, seed=t.seed),
            val_loader=TensorLoader(*splits.val, 256, device=acc.device),
            spec={"classes": splits.classes},
            summary=f"mlp on {len(splits.train[1])} points",
        )

    def inference(self, run, device="cpu") -> Inference:
        spec = run.spec()
        model = mlp(len(spec["classes"]))
        model.load_state_dict(load_weights(run.best_checkpoint))
        return Inference(model.to(device).eval(), spec["classes"], spec)

    def report(self, run, recipe, part, split, device, source=None) -> dict[str, Any]:
        inf = self.inference(run)
        with torch.no_grad():
            pred = inf.model(part[0]).argmax(1)
        summary = classification_summary(part[1].numpy(), pred.numpy(), inf.labels)
        write_report(run.dir, split, summary, {"source": source or split})
        return summary

    def read(self, run, recipe, path: Path):
        rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
        classes = run.spec()["classes"]
        return torch.tensor([[float(a), float(b)] for a, b, _ in rows]), torch.tensor(
            [classes.index(c) for *_, c in rows]
        )

    def predict(self, run, inputs: list[str]) -> list[dict[str, Any]]:
        inf = self.inference(run)
        with torch.no_grad():
            probs = inf.model(torch.tensor([parse_point(t) for t in inputs])).softmax(1)
        return [{"text": t, **outputs.top_k(p, inf.labels)} for t, p in zip(inputs, probs)]

    def predictor(self, run, onnx_path=None, precision="fp32") -> Predictor:
        return BlobsPredictor(self.inference(run))

    def export_subject(self, run) -> LogitsExport:
        inf = self.inference(run)
        x, y = self.splits(run.recipe()).val
        facts = {
            "input": {"name": "input", "shape": ["batch", 2]},
            "preprocessing": {},
            "output": {"shape": ["batch", len(inf.labels)]},
        }
        return LogitsExport(
            inf.model, [{"input": x}], [y], ["input"], {"input": {0: "batch"}}, facts, inf.labels, "mlp"
        )


class BlobsPredictor(TextInputs, Predictor):
    def __init__(self, inf: Inference):
        self.model, self.labels, self.model_name = inf.model, inf.labels, "mlp"

    def decode_text(self, item: str, index: int) -> list[float]:
        return parse_point(item, index)

    def predict(self, points: list[list[float]]) -> list[dict[str, Any]]:
        with torch.no_grad():
            return [outputs.top_k(p, self.labels) for p in self.model(torch.tensor(points)).softmax(1)]


@pytest.fixture
def blobs():
    register_family(BlobsFamily)
    yield
    unregister_family("blobs")


def cli(*args) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_a_family_defined_outside_the_package_trains_evaluates_predicts_exports_and_serves(blobs, tmp_path):
    recipe = tmp_path / "blobs.yaml"
    recipe.write_text(
        yaml.safe_dump({"task": "blobs", "track": {"runs_dir": str(tmp_path / "runs"), "tensorboard": False}})
    )
    cli("train", recipe, "--name", "toy")
    run = tmp_path / "runs" / "toy"
    report = json.loads((run / "report.json").read_text())
    assert report["test"]["accuracy"] > 0.9  # it learned, and was reported on the test split

    (tmp_path / "more.csv").write_text(
        "".join(f"{x},{y},c{c}\n" for x, y, c in [(0.5, 4.0, 0), (-2, 8, 1), (1.0, 1.0, 2)])
    )
    cli("evaluate", run, "--data", tmp_path / "more.csv")
    assert json.loads((run / "report.json").read_text())[f"data:{tmp_path / 'more.csv'}"]["examples"] == 3

    out = cli("predict", run, "0.5,4.0", "--json").output
    row = json.loads(out.strip().splitlines()[-1])
    assert row["label"].startswith("c") and 0 < row["confidence"] <= 1 and set(row["top"]) <= {"c0", "c1", "c2"}

    cli("export", run, "--format", "onnx")
    card = json.loads((run / "export" / "model.onnx.card.json").read_text())
    assert (
        card["task"] == "blobs" and card["checks"]["max_abs_diff"] <= 1e-4 and card["metrics"]["test"]["accuracy"] > 0.9
    )

    from nnrecipe.deploy.serve import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(run_dir=run, insecure_no_auth=True))) as client:
        got = client.post("/v1/predict", json={"inputs": ["0.5,4.0", "1,1"]})
        assert got.status_code == 200 and [p["label"] for p in got.json()["predictions"]][0] == row["label"]
        assert client.post("/v1/predict", json={"inputs": ["not a point"]}).status_code == 422
        assert client.get("/v1/model").json()["task"] == "blobs"


def test_verbs_a_family_leaves_out_are_refused_in_one_line(blobs, tmp_path):
    recipe = tmp_path / "blobs.yaml"
    recipe.write_text(
        yaml.safe_dump({"task": "blobs", "train": {"epochs": 1}, "track": {"runs_dir": str(tmp_path / "runs")}})
    )
    cli("train", recipe, "--name", "toy")
    from nnrecipe.deploy.merge import merge_run
    from nnrecipe.deploy.prune import prune_run
    from nnrecipe.runs import open_run

    run = open_run(tmp_path / "runs" / "toy")
    with pytest.raises(
        UserError, match=r"blobs: no merging for blobs runs \(offered for text_classification, token_classification\)"
    ):
        merge_run(run)
    with pytest.raises(UserError, match=r"blobs: no pruning for blobs runs \(offered for .*detection\)"):
        prune_run(run, 0.5)


def test_families_are_listed_in_a_fixed_order_whatever_was_imported_first(blobs):
    from nnrecipe.tasks import family_names
    from nnrecipe.tasks.family import BUILTIN

    names = family_names()
    assert names[-1] == "blobs" and len(names) == len(BUILTIN) + 1
    assert names[:3] == ["image_classification", "text_classification", "token_classification"]
