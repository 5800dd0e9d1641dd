"""A study's report: the trials table (parameters, value, state, seconds), the best trial and its recipe as
`best.yaml` (ready for `nnrecipe train`), report.json, and Optuna's matplotlib plots. A multi-objective
study adds its Pareto front (a table and pareto.png); its other plots follow the first objective."""

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
            "diverged": t.user_attrs.get("diverged"),  # pruned because its loss became NaN/inf
            "value": t.values[0] if t.values else None,
            "values": t.values,
            "params": t.params,
            "seconds": t.user_attrs.get("seconds"),
            "epochs": len(t.intermediate_values),
            "run": t.user_attrs.get("run"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def draw(study, folder: Path, metrics: list[str], maximize: bool) -> tuple[list[str], dict[str, str]]:
    """The plots Optuna can draw for this study (importances need two finished trials, ...)."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():  # the filters were set for the whole process
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        # matplotlib's complaints about a study's few points (no legend entries, equal axis limits) and the
        # importance evaluator's about too few or too alike trials: noise in a log, on most small studies
        warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
        return draw_plots(study, folder, metrics, maximize)


def draw_plots(study, folder: Path, metrics: list[str], maximize: bool) -> tuple[list[str], dict[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    out, skipped = [], {}
    (folder / "plots").mkdir(exist_ok=True)
    plots, kw = dict(PLOTS), {}
    if len(metrics) > 1:  # per-trial plots follow the first objective; the front gets its own
        plots.pop("intermediate.png")
        kw = {"target": lambda t: t.values[0], "target_name": metrics[0]}
    for name, fn in plots.items():
        if kw and name == "importances.png" and maximize:  # the evaluator ranks for low values of the target
            kw_here = kw | {"target": lambda t: -t.values[0], "target_name": f"-{metrics[0]}"}
        else:
            kw_here = kw
        try:
            ax = getattr(vis, fn)(study, **kw_here)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.savefig(folder / "plots" / name, dpi=110, bbox_inches="tight")
            plt.close(fig)
            out.append(f"plots/{name}")
        except Exception as e:  # noqa: BLE001 - optuna raises several kinds for "not enough trials"
            skipped[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            plt.close("all")
    if len(metrics) > 1:
        try:
            ax = vis.plot_pareto_front(study, target_names=metrics)
            ax.get_figure().savefig(folder / "plots" / "pareto.png", dpi=110, bbox_inches="tight")
            out.append("plots/pareto.png")
        except Exception as e:  # noqa: BLE001 - more than three objectives, no complete trial, ...
            skipped["pareto.png"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        plt.close("all")
    return out, skipped


def leader(study, plan):
    """The best trial; for several objectives, the Pareto front's best on the first."""
    from optuna.exceptions import OptunaError

    if not plan.multi:
        try:
            return study.best_trial
        except (ValueError, OptunaError):
            return None
    front = study.best_trials
    if not front:
        return None
    sign = 1 if plan.direction == "maximize" else -1
    return max(front, key=lambda t: sign * t.values[0])


def write_study_report(study, plan, folder: Path) -> dict[str, Any]:
    rows = trial_rows(study)
    best = leader(study, plan)
    front = sorted(t.number for t in study.best_trials) if plan.multi else []
    run = best.user_attrs.get("run") if best is not None else None  # none for a trial added by hand (add_trial)
    if run is not None:
        src = folder / run / "recipe.yaml"
        if src.is_file():  # the trial's recipe, writing its runs where the base recipe does
            recipe = yaml.safe_load(src.read_text())
            track = plan.recipe.get("track", {})
            recipe["track"] |= {"runs_dir": track.get("runs_dir", "runs"), "name": track.get("name")}
            (folder / "best.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    plots, skipped = draw(study, folder, plan.metrics, plan.direction == "maximize")
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")}
    rerun = {t.user_attrs.get("rerun_of") for t in study.get_trials(deepcopy=False)}
    interrupted = [t.number for t in study.get_trials(deepcopy=False)
                   if t.user_attrs.get("interrupted") and t.number not in rerun]  # fmt: skip
    report = {
        "study": plan.name,
        "metric": plan.metric,
        "direction": plan.direction,
        "metrics": plan.metrics,
        "directions": plan.directions,
        "sampler": plan.sampler,
        "pruner": plan.pruner,
        "planned": plan.trials,
        "states": states,
        "best": None if best is None else {"number": best.number, "value": best.values[0], "values": best.values,
                                           "params": best.params, "run": best.user_attrs.get("run")},
        "pareto": front,  # trial numbers on the Pareto front (several objectives)
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
    goal = ", ".join(f"{k} ({d})" for k, d in zip(plan.metrics, plan.directions, strict=True))
    md = [
        f"# Study {plan.name}",
        "",
        f"Objective{'s' if plan.multi else ''}: {goal}, best epoch of each trial; sampler {plan.sampler}, pruner "
        f"{plan.pruner}; {states['complete']} complete, {states['pruned']} pruned, {states['fail']} failed of "
        f"{plan.trials} planned; {report['seconds'] / 60:.1f} min of training in all.",
        "",
    ]
    if plan.multi:
        md += [f"**Pareto front: trials {', '.join(map(str, front)) or 'none yet'}** (no other trial is as good on "
               f"every objective and better on one).", ""]  # fmt: skip
    if best is not None:
        md += [f"**Best{' on ' + plan.metric + ' of the front' if plan.multi else ''}: trial {best.number}**, "
               f"{plan.metric} {best.values[0]:.4f}: "
               + ", ".join(f"`{k}={v}`" for k, v in best.params.items())
               + f". Its recipe: `best.yaml` (`nnrecipe train {folder / 'best.yaml'}`).", ""]  # fmt: skip
    heads = plan.metrics if plan.multi else ["value"]
    md += ["| trial | state | " + " | ".join(heads + names) + " | epochs | seconds |",
           "|---|---|" + "---|" * len(heads + names) + "---|---|"]  # fmt: skip
    for r in rows:
        shown = r["values"] or [None] * len(heads)
        values = " | ".join("" if v is None else f"{v:.4g}" if plan.multi else f"{v:.4f}" for v in shown)
        params = " | ".join(f"{r['params'][n]:.4g}" if isinstance(r["params"].get(n), float) else str(r["params"].get(n, ""))
                            for n in names)  # fmt: skip
        mark = " (front)" if r["number"] in front else ""
        state = f"{r['state']} (diverged)" if r["diverged"] else r["state"]
        md.append(f"| {r['number']}{mark} | {state} | {values} | {params} | {r['epochs']} | {r['seconds'] or ''} |")
    md.append("")
    md += [line for p in plots for line in (f"![{p}]({p})", "")]
    (folder / "report.md").write_text("\n".join(md))
    if best is not None:
        console.print(f"best: trial {best.number}, {plan.metric} {best.values[0]:.4f} {best.params}; "
                      f"recipe {folder / 'best.yaml'}; report {folder / 'report.md'}", soft_wrap=True)  # fmt: skip
    return report
