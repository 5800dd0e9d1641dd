"""A study's report: the trials table (parameters, value, state, seconds), the best trial and its recipe as
`best.yaml` (ready for `nnrecipe train`), report.json, and Optuna's matplotlib plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from nnrecipe.engine.loop import console

PLOTS = {  # file name -> optuna.visualization.matplotlib function
    "history.png": "plot_optimization_history",
    "importances.png": "plot_param_importances",
    "parallel.png": "plot_parallel_coordinate",
    "slice.png": "plot_slice",
    "intermediate.png": "plot_intermediate_values",
}


def trial_rows(study) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": t.params,
            "seconds": t.user_attrs.get("seconds"),
            "epochs": len(t.intermediate_values),
            "run": t.user_attrs.get("run"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def draw(study, folder: Path) -> tuple[list[str], dict[str, str]]:
    """The plots Optuna can draw for this study (importances need two finished trials, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)

    out, skipped = [], {}
    (folder / "plots").mkdir(exist_ok=True)
    for name, fn in PLOTS.items():
        try:
            ax = getattr(vis, fn)(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.savefig(folder / "plots" / name, dpi=110, bbox_inches="tight")
            plt.close(fig)
            out.append(f"plots/{name}")
        except Exception as e:  # noqa: BLE001 - optuna raises several kinds for "not enough trials"
            skipped[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            plt.close("all")
    return out, skipped


def write_study_report(study, plan, folder: Path) -> dict[str, Any]:
    from optuna.exceptions import OptunaError

    rows = trial_rows(study)
    try:
        best = study.best_trial
    except (ValueError, OptunaError):
        best = None
    if best is not None:
        src = folder / best.user_attrs["run"] / "recipe.yaml"
        if src.is_file():  # the trial's recipe, writing its runs where the base recipe does
            recipe = yaml.safe_load(src.read_text())
            track = plan.recipe.get("track", {})
            recipe["track"] |= {"runs_dir": track.get("runs_dir", "runs"), "name": track.get("name")}
            (folder / "best.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    plots, skipped = draw(study, folder)
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")}
    rerun = {t.user_attrs.get("rerun_of") for t in study.get_trials(deepcopy=False)}
    interrupted = [t.number for t in study.get_trials(deepcopy=False)
                   if t.user_attrs.get("interrupted") and t.number not in rerun]  # fmt: skip
    report = {
        "study": plan.name,
        "metric": plan.metric,
        "direction": plan.direction,
        "sampler": plan.sampler,
        "pruner": plan.pruner,
        "planned": plan.trials,
        "states": states,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                           "run": best.user_attrs.get("run")},
        "seconds": sum(r["seconds"] or 0 for r in rows),
        "interrupted": interrupted,  # Ctrl-C'd trials that --resume will run again
        "trials": rows,
        "plots": plots,
        "plots_skipped": skipped,
    }  # fmt: skip
    tmp = folder / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(folder / "report.json")
    names = sorted({k for r in rows for k in r["params"]})
    md = [
        f"# Study {plan.name}",
        "",
        f"Objective: {plan.metric} ({plan.direction}), best epoch of each trial; sampler {plan.sampler}, pruner "
        f"{plan.pruner}; {states['complete']} complete, {states['pruned']} pruned, {states['fail']} failed of "
        f"{plan.trials} planned; {report['seconds'] / 60:.1f} min of training in all.",
        "",
    ]
    if best is not None:
        md += [f"**Best: trial {best.number}**, {plan.metric} {best.value:.4f}: "
               + ", ".join(f"`{k}={v}`" for k, v in best.params.items())
               + f". Its recipe: `best.yaml` (`nnrecipe train {folder / 'best.yaml'}`).", ""]  # fmt: skip
    md += ["| trial | state | value | " + " | ".join(names) + " | epochs | seconds |",
           "|---|---|---|" + "---|" * len(names) + "---|---|"]  # fmt: skip
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        params = " | ".join(f"{r['params'][n]:.4g}" if isinstance(r["params"].get(n), float) else str(r["params"].get(n, ""))
                            for n in names)  # fmt: skip
        md.append(f"| {r['number']} | {r['state']} | {value} | {params} | {r['epochs']} | {r['seconds'] or ''} |")
    md.append("")
    md += [line for p in plots for line in (f"![{p}]({p})", "")]
    (folder / "report.md").write_text("\n".join(md))
    if best is not None:
        console.print(f"best: trial {best.number}, {plan.metric} {best.value:.4f} {best.params}; "
                      f"recipe {folder / 'best.yaml'}; report {folder / 'report.md'}", soft_wrap=True)  # fmt: skip
    return report
