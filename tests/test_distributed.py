"""Multi-process training through torchrun (PyTorch DDP via Accelerate, gloo on CPU): one run directory,
one set of metrics and checkpoints written by rank 0, gradients synchronised, a model that learns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_under_torchrun_train_one_run(tmp_path):
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "nnrecipe.cli",
        "train",
        str(ROOT / "recipes/digits-convnet.yaml"),
        "--set",
        f"track.runs_dir={runs}",
        "--set",
        "train.epochs=20",
        "--set",
        "track.progress=false",
        "--set",
        "train.precision=fp32",
    ]
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    made = list(runs.iterdir())
    assert len(made) == 1, made  # both processes used rank 0's directory
    run = made[0]
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 21))  # written once, not once per process
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert json.loads((run / "report.json").read_text())["test"]["accuracy"] > 0.93
    assert (run / "checkpoints" / "best.safetensors").is_file()
    assert "2 processes (DDP)" in res.stdout + res.stderr
