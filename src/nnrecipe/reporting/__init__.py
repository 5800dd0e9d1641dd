"""Reports of a run: report.json holds one entry per evaluated split; report.md is rewritten from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nnrecipe.engine.checkpoint import weights_note


def read_report(run_dir: Path) -> dict[str, Any]:
    """report.json of a run: {split: entry}, {} before the first report."""
    path = Path(run_dir) / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_meta(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def merge_report(run_dir: Path, split: str, entry: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Put `entry` under `split` in run_dir/report.json (atomically), keeping the other splits; return (path, report)."""
    path = Path(run_dir) / "report.json"
    note = weights_note(Path(run_dir) / "checkpoints" / "best.safetensors") or run_meta(run_dir).get("weights")
    report = read_report(run_dir) | {split: entry | ({"weights": note} if note else {})}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    return path, report


def source_line(entry: dict[str, Any]) -> list[str]:
    """Which data and which weights an entry scored."""
    lines = [f"Data: `{entry['source']}`", ""] if entry.get("source") else []
    return lines + ([f"Weights: {entry['weights']}", ""] if entry.get("weights") else [])


def plot_lines(entry: dict[str, Any]) -> list[str]:
    return [line for p in entry.get("plots", []) for line in (f"![{p}]({p})", "")]
