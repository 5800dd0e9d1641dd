"""Reports of a run: report.json holds one entry per evaluated split; report.md is rewritten from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def merge_report(run_dir: Path, split: str, entry: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Put `entry` under `split` in run_dir/report.json, keeping the other splits; return (path, report)."""
    path = Path(run_dir) / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[split] = entry
    path.write_text(json.dumps(report, indent=2))
    return path, report


def source_line(entry: dict[str, Any]) -> list[str]:
    return [f"Data: `{entry['source']}`", ""] if entry.get("source") else []


def plot_lines(entry: dict[str, Any]) -> list[str]:
    return [line for p in entry.get("plots", []) for line in (f"![{p}]({p})", "")]
