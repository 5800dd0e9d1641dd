"""Many runs at once: find the run directories under a folder, list them (`nnrecipe runs`), put a few side by
side (`nnrecipe compare`) and free the disk that checkpoints of runs nobody needs take (`nnrecipe clean`).

Everything here reads what a run already writes (run.json, report.json, metrics.jsonl, recipe.yaml): a run
made by any family, or by an older nnrecipe, is listed the same way.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnrecipe.engine.tracking import flatten
from nnrecipe.errors import UserError
from nnrecipe.reporting import read_report, run_meta
from nnrecipe.runs import RUN_STATUSES, Run, given_twice
from nnrecipe.tasks.family import family_names

# Runs may sit one or two folders deep (runs/<study>/<trial>, runs/<bench>/<run>).
MAX_DEPTH = 3
# A finished run's record stays whatever `clean` does: only these go.
CHECKPOINTS = "checkpoints"


@dataclass
class RunRow:
    """One run as `nnrecipe runs` shows it."""

    path: Path
    task: str
    status: str
    recipe: str
    metric: str  # the family's primary metric, e.g. "accuracy"
    mode: str  # "max" or "min"
    value: float | None  # on test, else the first split reported
    split: str
    created: str
    seconds: float | None
    bytes: int
    checkpoint_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def find_runs(root: Path) -> list[Path]:
    """Every folder under `root` (or `root` itself) holding a run.json, oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no runs folder: {root}")
    if (root / "run.json").is_file():
        return [root]
    found: list[Path] = []
    frontier = [root]
    for _ in range(MAX_DEPTH):
        nxt = []
        for folder in frontier:
            for child in sorted(p for p in folder.iterdir() if p.is_dir()):
                (found if (child / "run.json").is_file() else nxt).append(child)
        frontier = nxt
    return sorted(found, key=lambda p: ((listed_meta(p) or {}).get("created", ""), str(p)))


def listed_meta(run_dir: Path) -> dict[str, Any] | None:
    """run.json for a listing, None when it is damaged: one damaged run is shown as such, not the end of the
    listing (opening that run says what is wrong with it)."""
    try:
        return run_meta(run_dir)
    except UserError:
        return None


def primary_metric(meta: dict[str, Any], run_dir: Path) -> tuple[str, str]:
    """The (name, mode) of the run's primary metric: run.json's, else its family's (an older run)."""
    if "metric" in meta:
        return meta["metric"]["name"], meta["metric"]["mode"]
    from nnrecipe.tasks.family import family_of

    try:
        metric = family_of(Run(run_dir)).metric
    except UserError:  # a family no longer registered (a removed plugin): list the run all the same
        return "", "max"
    return metric.name, metric.mode


def reported_value(report: dict[str, Any], metric: str) -> tuple[float | None, str]:
    """The metric on test, else on the first split that has it."""
    for split in ("test", *report):
        value = report.get(split, {}).get(metric)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value), split
    return None, ""


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def describe(run_dir: Path) -> RunRow:
    meta = listed_meta(run_dir)
    if meta is None:
        size = folder_bytes(run_dir), folder_bytes(run_dir / CHECKPOINTS)
        return RunRow(run_dir, "?", "damaged (run.json)", "", "", "max", None, "", "", None, *size)
    metric, mode = primary_metric(meta, run_dir)
    try:
        report = read_report(run_dir)
    except UserError:  # a damaged report.json: the run is listed without its metric
        report = {}
    value, split = reported_value(report, metric) if metric else (None, "")
    created = meta.get("created", "")
    seconds = None
    if created:  # to when it ended (a later calibrate or clean rewrote run.json: its time was counted too)
        try:
            start = time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%S"))
            ended = meta.get("ended")
            end = time.mktime(time.strptime(ended, "%Y-%m-%dT%H:%M:%S")) if ended else None
            seconds = max(0.0, (end or (run_dir / "run.json").stat().st_mtime) - start)
        except (ValueError, TypeError):
            pass
    return RunRow(
        run_dir,
        meta.get("task", "?"),
        meta.get("status", "?") + (" (cleaned)" if meta.get("cleaned") else ""),
        meta.get("recipe_name", ""),
        metric,
        mode,
        value,
        split,
        created,
        seconds,
        folder_bytes(run_dir),
        folder_bytes(run_dir / CHECKPOINTS),
    )


def list_runs(root: Path, task: str | None = None, status: str | None = None) -> list[RunRow]:
    """The runs under `root`, those of one task and/or status when given; a status or task that no run could
    have is an error naming the ones there are (it printed an empty table, as if no run matched)."""
    if status is not None and status not in (*RUN_STATUSES, "damaged"):
        raise UserError(f"--status: one of {', '.join((*RUN_STATUSES, 'damaged'))} (got {status!r})")
    rows = [describe(p) for p in find_runs(root)]
    if task is not None and task not in {r.task for r in rows} and task not in family_names():
        raise UserError(f"--task: one of {', '.join(family_names())} (got {task!r})")
    return [r for r in rows if (task is None or r.task == task) and (status is None or r.status.split()[0] == status)]


# -- compare -------------------------------------------------------------------------------------------


def history(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash mid-write: the rest still counts
            continue
    return rows


def recipe_differences(runs: list[Path]) -> dict[str, list[Any]]:
    """The recipe fields whose values differ between the runs (track.* aside: names and folders)."""
    flat = [flatten(Run(p).raw_recipe()) for p in runs]
    keys = sorted({k for f in flat for k in f if not k.startswith("track.")})
    return {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k), default=str) for f in flat}) > 1}


def compare(runs: list[Path], out: Path) -> dict[str, Any]:
    """Each run's report metrics side by side, the recipe fields that differ, and one PNG of the learning
    curves that the runs share (one panel per metric, one line per run)."""
    if len(runs) < 2:
        raise UserError("compare: give two or more run directories")
    out = Path(out)
    if out.is_dir() or out.suffix.lower() != ".png":  # a folder became <folder>.png; x.txt a matplotlib traceback
        raise UserError(f"--out {out}: the curves are a PNG; give a file name ending in .png")
    for p in runs:
        if not (Path(p) / "run.json").is_file():
            raise UserError(f"{p} is not a run directory (no run.json)")
        run_meta(p)  # a damaged one is named here, before anything is written
        if out.resolve().is_relative_to(Path(p).resolve()):  # --out runs/a/plots/curves.png replaced its plot
            raise UserError(f"--out {out}: inside the compared run {p}; give a file outside the runs")
    twice = given_twice(runs)
    if twice is not None:
        raise UserError(f"compare: {twice} is given twice")
    rows = [describe(Path(p)) for p in runs]
    tasks = sorted({r.task for r in rows})
    if len(tasks) > 1:  # every field of two families differed: a page of rows and no shared metric
        raise UserError(f"compare: the runs belong to different tasks ({', '.join(tasks)}); compare runs of one task")
    differences = recipe_differences([Path(p) for p in runs])
    reports = [read_report(p) for p in runs]
    metrics: dict[str, list[Any]] = {}
    for i, report in enumerate(reports):
        for split, entry in report.items():
            for k, v in entry.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    metrics.setdefault(f"{split}.{k}", [None] * len(runs))[i] = v
    histories = [history(p) for p in runs]
    curves = sorted(
        set.intersection(*[{k for row in h for k in row} for h in histories if h] or [set()])
        - {"epoch", "step", "lr", "epoch_seconds", "samples_per_s", "steps_per_s"}
    )
    plot = plot_curves(runs, histories, curves, out) if curves else None
    return {
        "runs": [r.as_dict() for r in rows],
        "metrics": metrics,
        "recipe_differences": differences,
        "plot": str(plot) if plot else None,
    }


def plot_curves(runs: list[Path], histories: list[list[dict]], curves: list[str], out: Path) -> Path:
    from nnrecipe.reporting.plots import plt

    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, curves):
        for run, h in zip(runs, histories):
            points = [(r.get("epoch", r.get("step")), r[key]) for r in h if isinstance(r.get(key), int | float)]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=Path(run).name)
        ax.set(title=key, xlabel="epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# -- clean ---------------------------------------------------------------------------------------------


def ensemble_members(root: Path) -> dict[Path, Path]:
    """Each run an ensemble under `root` averages (resolved) -> that ensemble: the members' checkpoints are
    the ensemble's weights."""
    used: dict[Path, Path] = {}
    for run_dir in find_runs(root):
        for member in ((listed_meta(run_dir) or {}).get("ensemble") or {}).get("members", []):
            used.setdefault(Path(member).resolve(), run_dir)
    return used


def to_clean(rows: list[RunRow], keep_best: int, needed: Collection[Path] = ()) -> list[RunRow]:
    """Runs whose checkpoints can go: within each recipe (whose runs measure the same thing; a tune study's
    trials are one recipe), every finished or pruned run but the `keep_best` best by its primary metric.
    Runs that are not finished (running, interrupted: they need their checkpoint to resume), runs without a
    reported metric and the `needed` ones (an ensemble's members: removing them broke the ensemble) are
    never chosen. A pruned run (a tuner stopped it) is over: nothing resumes it."""
    groups: dict[tuple[str, str], list[RunRow]] = {}
    for r in rows:
        if r.path.resolve() in needed:
            continue
        if r.status in ("finished", "early_stopped", "pruned") and r.value is not None and r.checkpoint_bytes:
            groups.setdefault((r.task, r.recipe), []).append(r)
    chosen = []
    for group in groups.values():
        group.sort(key=lambda r: r.value if r.mode == "min" else -r.value)
        chosen += group[keep_best:]
    return sorted(chosen, key=lambda r: str(r.path))


def remove_checkpoints(row: RunRow) -> None:
    """Delete the run's checkpoints; run.json says so, so that predict and serve can explain why."""
    shutil.rmtree(row.path / CHECKPOINTS)
    Run(row.path).update_meta(cleaned=time.strftime("%Y-%m-%dT%H:%M:%S"))
