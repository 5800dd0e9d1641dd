"""MLflow beside TensorBoard and W&B (`track.mlflow: true`): one MLflow run per nnrecipe run, found again on
resume (its id is kept in the run folder), closed once the report exists with the report, the plots and the
best weights as artefacts. Through `MlflowClient`, so no process-global "active run" is left behind."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nnrecipe.engine.tracking import flatten
from nnrecipe.errors import UserError, first_line

ID_FILE = "mlflow_run_id"
PARAM_CHUNK = 100  # MLflow's log_batch takes at most 100 params per call
PARAM_MAX_CHARS = 6000  # and values up to 6,000 characters


def client_for(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("track.mlflow: true needs mlflow: pip install 'nnrecipe[mlflow]'") from None
    resolved = tracking_uri(uri)
    if resolved.startswith("file:"):
        # MLflow 3 keeps its file store in maintenance mode behind this switch; a folder is what the recipe
        # asked for (no server, no database). A server or sqlite URI gets MLflow's newer features.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    answers(uri)
    with unusable(uri):
        return MlflowClient(tracking_uri=resolved)


def answers(uri: str, seconds: float = 5.0) -> None:
    """A tracking server's port takes a connection within `seconds`: MLflow retries an unreachable
    server with backoff for minutes before the run could start (or fail)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    try:
        with socket.create_connection(
            (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), seconds
        ):
            pass
    except OSError as e:
        why = e.strerror or first_line(e)
        raise UserError(f"track.mlflow_uri {uri}: no server answers there ({why}); start it or fix the URI") from None


@contextmanager
def unusable(uri: str) -> Iterator[None]:
    """MLflow's own errors for a store it cannot use (an unknown scheme, a database it cannot open) as one
    line naming the URI; they were tracebacks from inside MLflow and SQLAlchemy."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"track.mlflow_uri {uri}: MLflow cannot log there ({first_line(e)})") from None


def tracking_uri(uri: str) -> str:
    """A folder becomes a file store's absolute URI (the current folder at training time); URIs pass."""
    return uri if ":" in uri.split("/")[0] or uri.startswith("databricks") else Path(uri).resolve().as_uri()


class MlflowLogger:
    """The metrics side: params once, a batch of metrics per logged row."""

    def __init__(self, run_dir: Path, uri: str, experiment: str, config: dict[str, Any]):
        from mlflow.entities import Param

        self.client = client_for(uri)
        id_path = Path(run_dir) / ID_FILE
        if id_path.is_file():  # a resumed run goes on in its MLflow run
            self.run_id = id_path.read_text().strip()
            return
        with unusable(uri):  # the first contact with the store
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run = self.client.create_run(
                experiment_id, run_name=Path(run_dir).name, tags={"nnrecipe.run_dir": str(run_dir)}
            )
        self.run_id = run.info.run_id
        tmp = id_path.with_suffix(".tmp")
        tmp.write_text(self.run_id)
        os.replace(tmp, id_path)
        params = [Param(k, str(v)[:PARAM_MAX_CHARS]) for k, v in flatten(config).items()]
        for i in range(0, len(params), PARAM_CHUNK):
            self.client.log_batch(self.run_id, params=params[i : i + PARAM_CHUNK])

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in scalars.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


def publish(run_dir: Path, uri: str, status: str) -> None:
    """After the report: report.json/.md, plots/ and the best weights as artefacts; the MLflow run ends
    FINISHED (or FAILED for a run that diverged). An interrupted run stays open for its resume."""
    run_dir = Path(run_dir)
    id_path = run_dir / ID_FILE
    if not id_path.is_file() or status == "interrupted":
        return
    client, run_id = client_for(uri), id_path.read_text().strip()
    for name in ("report.json", "report.md", "recipe.yaml"):
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    if (run_dir / "plots").is_dir():
        client.log_artifacts(run_id, str(run_dir / "plots"), "plots")
    best = run_dir / "checkpoints" / "best.safetensors"
    if best.is_file():
        client.log_artifact(run_id, str(best), "checkpoints")
    client.set_terminated(run_id, "FINISHED" if status in ("finished", "early_stopped") else "FAILED")
