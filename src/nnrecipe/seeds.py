"""`nnrecipe train RECIPE --seeds 0 1 2`: one recipe trained once per seed, summarised as mean +/- std.

Each seed is an ordinary run (<name>-seed<N>); the summary (<name>-seeds/summary.json and summary.md)
holds every reported number of every run and their mean and sample standard deviation, which is how a
noisy figure should be quoted. With `--ensemble` the runs also become one ensemble run (<name>-ensemble).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from nnrecipe.engine.config import check_seed
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError
from nnrecipe.recipe import apply_override, validate_recipe
from nnrecipe.runs import Run, train_new_run, untaken
from nnrecipe.tasks.family import get_family

# One run per seed: a range past this is a typo (0-10000), not a plan, and it was listed in memory first.
MAX_RUNS = 1000


def parse_seeds(items: list[str]) -> list[int]:
    """`0 1 2`, `0,1,2` or `0-4` (inclusive) into distinct seeds, in order."""
    seeds: list[int] = []
    try:
        for item in (part for text in items for part in text.replace(",", " ").split()):
            if "-" in item.lstrip("-"):
                low, high = (check_seed(int(end), "--seeds") for end in item.split("-", 1))
                if high - low >= MAX_RUNS:
                    raise UserError(f"--seeds: at most {MAX_RUNS} runs at once (got {item}: {high - low + 1})")
                seeds += range(low, high + 1)
            else:
                seeds.append(check_seed(int(item), "--seeds"))
            if len(seeds) > MAX_RUNS:
                raise UserError(f"--seeds: at most {MAX_RUNS} runs at once (got {len(seeds)} or more)")
    except ValueError:
        raise UserError(
            f"--seeds: whole numbers, e.g. --seeds 0 1 2 or --seeds 0-4 (got {' '.join(items)!r})"
        ) from None
    if len(set(seeds)) < 2 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: two or more different seeds (got {' '.join(items)!r})")
    return seeds


def train_seeds(recipe: Any, recipe_name: str, seeds: list[int], ensemble: bool = False) -> dict[str, Any]:
    """Train `recipe` once per seed and write the summary; returns it (status interrupted: stopped early)."""
    family = get_family(recipe.task)
    if ensemble:
        family.require("ensemble")
    base = recipe.track.name or f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    raw = recipe.model_dump(mode="json")
    runs: list[Run] = []
    results: list[dict[str, Any]] = []
    for seed in seeds:
        apply_override(raw, f"{family.seed_field}={seed}")
        apply_override(raw, f"track.name={base}-seed{seed}")
        one = validate_recipe(raw)
        run, result = train_new_run(family, one, recipe_name, f"seed {seed}")
        if result["status"] == "interrupted":
            return {"status": "interrupted", "runs": [str(r.dir) for r in runs + [run]]}
        runs.append(run)
        results.append(result)
    summary = summarise(seeds, runs, results, family.metric.name)
    if ensemble:
        from nnrecipe.tasks.ensemble import create_ensemble

        name = untaken(Path(recipe.track.runs_dir) / f"{base}-ensemble").name  # was refused after training
        ens = create_ensemble([r.dir for r in runs], name, runs_dir=Path(recipe.track.runs_dir))
        entry = next(iter(ens.report().values()))
        summary["ensemble"] = {"run": str(ens.dir), family.metric.name: entry[family.metric.name]}
    folder = untaken(Path(recipe.track.runs_dir) / f"{base}-seeds")  # an earlier one of this name is kept
    write_summary(folder, summary)
    console.print(f"summary of {len(seeds)} seeds: {folder / 'summary.md'}")
    return {"status": "finished", **summary}


def summarise(seeds: list[int], runs: list[Run], results: list[dict[str, Any]], primary: str) -> dict[str, Any]:
    """Mean and sample std of every number the runs reported (the top-level ones of each run's summary)."""
    flat = [numbers(r) for r in results]
    keys = [k for k in flat[0] if all(k in f for f in flat)]
    stats = {}
    for k in keys:
        values = [f[k] for f in flat]
        stats[k] = {"mean": statistics.fmean(values), "std": statistics.stdev(values), "values": values}
    return {
        "seeds": seeds,
        "runs": [str(r.dir) for r in runs],
        "primary": primary,
        "metrics": stats,
    }


def numbers(result: dict[str, Any]) -> dict[str, float]:
    """The floats of a run's summary, one level of nesting flattened (macro_avg.f1-score)."""
    out = {}
    for k, v in result.items():
        if isinstance(v, float):
            out[k] = v
        elif isinstance(v, dict) and v and all(isinstance(x, float) for x in v.values()):
            out |= {f"{k}.{kk}": x for kk, x in v.items()}
    return out


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    primary, stats = summary["primary"], summary["metrics"]
    md = [f"# {len(summary['seeds'])} seeds: {folder.name}", ""]
    if primary in stats:
        s = stats[primary]
        md += [f"**{primary}: {s['mean']:.4f} +/- {s['std']:.4f}** (mean +/- sample std over seeds)", ""]
    md += ["| metric | mean | std | " + " | ".join(f"seed {s}" for s in summary["seeds"]) + " |"]
    md += ["|---|---:|---:|" + "---:|" * len(summary["seeds"])]
    for k, s in stats.items():
        md.append(f"| {k} | {s['mean']:.4f} | {s['std']:.4f} | " + " | ".join(f"{v:.4f}" for v in s["values"]) + " |")
    md += ["", "Runs: " + ", ".join(f"`{r}`" for r in summary["runs"]), ""]
    if "ensemble" in summary:
        e = summary["ensemble"]
        gain = e[primary] - stats[primary]["mean"] if primary in stats else float("nan")
        md += [f"Ensemble of them (`{e['run']}`): {primary} {e[primary]:.4f} ({gain:+.4f} over the mean)", ""]
    (folder / "summary.md").write_text("\n".join(md))
