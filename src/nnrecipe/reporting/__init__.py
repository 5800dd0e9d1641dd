"""Reports of a run: report.json holds one entry per evaluated split; report.md is rewritten from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nnrecipe.engine.checkpoint import weights_note
from nnrecipe.errors import UserError


def read_report(run_dir: Path) -> dict[str, Any]:
    """report.json of a run: {split: entry}, {} before the first report."""
    return read_run_file(Path(run_dir) / "report.json")


def run_meta(run_dir: Path) -> dict[str, Any]:
    return read_run_file(Path(run_dir) / "run.json")


def read_run_file(path: Path) -> dict[str, Any]:
    """A run's JSON file as a dict ({} when absent); a damaged one is a one-line error naming it. The run
    writes these atomically, so damage comes from outside (a disk, a hand edit), not from a stopped run."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged (not JSON: {e}); restore it, or remove the run") from None
    if not isinstance(data, dict):
        raise UserError(
            f"{path} is damaged (a JSON {type(data).__name__}, not an object); restore it, or remove the run"
        )
    return data


def merge_report(run_dir: Path, split: str, entry: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Put `entry` under `split` in run_dir/report.json (atomically), keeping the other splits; return (path, report)."""
    path = Path(run_dir) / "report.json"
    meta = run_meta(run_dir)
    note = weights_note(Path(run_dir) / "checkpoints" / "best.safetensors") or meta.get("weights")
    entry = entry | ({"weights": note} if note else {})
    if meta.get("temperature"):  # `nnrecipe calibrate`: the temperature, and this split's ECE before it
        done = meta.get("calibrated", {})
        entry["temperature"] = {"value": meta["temperature"]} | (
            {"ece_before": done["ece_before"]} if done.get("split") == split else {}
        )
    members = meta.get("member_scores", {}).get(split)
    if members and members["metric"] in entry:  # an ensemble: its members on the same split, and the gain
        scores, mine = members["scores"], entry[members["metric"]]
        mean = sum(scores.values()) / len(scores)
        entry["members"] = {"metric": members["metric"], "scores": scores, "gain_over_mean": mine - mean}
        entry["members"]["gain_over_best"] = mine - max(scores.values())
    report = read_report(run_dir) | {split: entry}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    return path, report


def source_line(entry: dict[str, Any]) -> list[str]:
    """Which data and which weights an entry scored (for an ensemble, its members' scores beside its own)."""
    lines = [f"Data: `{entry['source']}`", ""] if entry.get("source") else []
    lines += [f"Weights: {entry['weights']}", ""] if entry.get("weights") else []
    t = entry.get("temperature")
    if t:
        was = f"; ECE before it {t['ece_before']:.4f}" if "ece_before" in t else ""
        lines += [f"Temperature: {t['value']:.4g} (fitted on the validation split by `nnrecipe calibrate`{was})", ""]
    m = entry.get("members")
    if m:
        metric = m["metric"]
        lines += [f"| member | {metric} |", "|---|---:|"]
        lines += [f"| {name} | {v:.4f} |" for name, v in m["scores"].items()]
        lines += [
            f"| **ensemble** | **{entry[metric]:.4f}** |",
            "",
            f"Gain: {m['gain_over_mean']:+.4f} over the members' mean, {m['gain_over_best']:+.4f} over the best member.",
            "",
        ]
    return lines


def plot_lines(entry: dict[str, Any]) -> list[str]:
    return [line for p in entry.get("plots", []) for line in (f"![{p}]({p})", "")]
