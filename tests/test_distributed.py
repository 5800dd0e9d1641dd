"""Multi-process training through torchrun (PyTorch DDP via Accelerate, gloo on CPU): one run directory,
one set of metrics and checkpoints written by rank 0, gradients synchronised, a model that learns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _history(run: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["train_loss"], r["val_loss"]) for r in rows]


def test_two_processes_train_one_run_and_two_nodes_give_the_same_history(tmp_path):
    """`nnrecipe train --nproc 2` (torchrun, one node): one run directory, metrics written once by rank 0, a
    model that learns. Then `--nnodes 2 --node-rank R --master 127.0.0.1:PORT` (c10d rendezvous), one process
    per "node", gives the same loss history."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    epochs = 15
    base = [sys.executable, "-m", "nnrecipe.cli", "train", str(ROOT / "recipes/digits-convnet.yaml")]
    base += ["--set", f"train.epochs={epochs}", "--set", "track.progress=false", "--set", "track.tensorboard=false"]
    base += ["--set", "train.precision=fp32", "--set", f"track.runs_dir={tmp_path / 'runs'}"]
    one = subprocess.run(
        [*base, "--name", "one-node", "--nproc", "2"], capture_output=True, text=True, env=env, timeout=600
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["one-node"]  # both processes used rank 0's
    run = tmp_path / "runs" / "one-node"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))  # written once, not once per process
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert json.loads((run / "report.json").read_text())["test"]["accuracy"] > 0.9
    assert (run / "checkpoints" / "best.safetensors").is_file()
    assert "2 processes (DDP)" in one.stdout + one.stderr
    nodes = [
        subprocess.Popen(
            [*base, "--name", "two-nodes", "--nnodes", "2", "--node-rank", str(r), "--master", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=600) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one-node", "two-nodes"]  # rank 0's only
    a, b = _history(run), _history(tmp_path / "runs" / "two-nodes")
    assert len(a) == epochs and a == b, (a, b)


def test_resuming_with_another_number_of_processes_is_refused_clearly(tmp_path):
    from tests.conftest import make_recipe

    from nnrecipe.errors import UserError
    from nnrecipe.runs import create_run
    from nnrecipe.tasks import get_family

    recipe = make_recipe(tmp_path / "runs")
    run = create_run(recipe, "ddp")
    run.update_meta(status="running", processes=2)  # as a 2-process run killed mid-way leaves it
    import pytest

    with pytest.raises(UserError, match=r"trained with 2 process\(es\); resume it with 2 \(this launch has 1\)"):
        get_family("image_classification").train(recipe, run, resume=True)
