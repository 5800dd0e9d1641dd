"""MLflow tracking (`track.mlflow: true`) into a local file store: params, per-epoch metrics, the report, plots
and best weights as artefacts; a resumed run continues its MLflow run."""

from __future__ import annotations

import pytest
from tests.conftest import make_recipe

from nnrecipe.engine.tracking import Tracker
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

mlflow = pytest.importorskip("mlflow")


def test_a_digits_run_is_logged_to_a_local_mlflow_store(tmp_path):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    recipe = make_recipe(tmp_path / "runs", "track.mlflow=true", f"track.mlflow_uri={store}", "track.plots=true")
    run = create_run(recipe, "digits")
    get_family("image_classification").train(recipe, run)
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "nnrecipe"]
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == run.dir.name and logged.info.status == "FINISHED"
    assert logged.data.params["optim.lr"] == str(recipe.optim.lr) and logged.data.params["model.name"] == "convnet"
    history = client.get_metric_history(logged.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(run.report()["test"]["accuracy"], abs=0.2)  # val vs test, close
    artefacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"report.json", "report.md", "recipe.yaml", "plots", "checkpoints"} <= artefacts
    assert [a.path for a in client.list_artifacts(logged.info.run_id, "checkpoints")] == [
        "checkpoints/best.safetensors"
    ]
    # A resumed run (a new Tracker on the same folder) logs into the same MLflow run.
    again = Tracker.for_recipe(run.dir, recipe)
    assert again._mlflow.run_id == logged.info.run_id


def test_mlflow_off_by_default_writes_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = make_recipe(tmp_path / "runs", "train.epochs=1")
    get_family("image_classification").train(recipe, create_run(recipe, "digits"))
    assert not (tmp_path / "mlruns").exists()


def test_a_tracking_uri_mlflow_cannot_use_is_one_line_at_once(tmp_path):
    """A server that does not answer kept the run waiting for MLflow's retries (minutes); an unknown scheme
    was a traceback from inside MLflow."""
    import socket

    from nnrecipe.engine.mlflow_tracking import MlflowLogger
    from nnrecipe.errors import UserError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(UserError, match=rf"track.mlflow_uri {closed}: no server answers there \(Connection refused\)"):
        MlflowLogger(tmp_path, closed, "nnrecipe", {})
    with pytest.raises(UserError, match=r"track.mlflow_uri foo://bar: MLflow cannot log there \(.*unsupported URI"):
        MlflowLogger(tmp_path, "foo://bar", "nnrecipe", {})
    # Through `train`: the new run is removed, as for any failed start; it stayed behind saying "running"
    from tests.conftest import in_process

    code, output = in_process("train", "digits-convnet", "--set", f"track.runs_dir={tmp_path / 'runs'}", "--set",
                              "track.mlflow=true", "--set", f"track.mlflow_uri={closed}")  # fmt: skip
    assert code == 1 and "no server answers there" in output and "removed: nothing was trained" in output, output
    assert not any((tmp_path / "runs").iterdir())
