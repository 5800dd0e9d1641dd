"""Fairness by group: `nnrecipe evaluate runs/<run> --groups FILE`.

FILE is a CSV of `example,group` rows (a header line is allowed): an example is an image's path (or its
file name) for image runs, the text itself for text runs, as the family's `example_keys` names them.
fairlearn's MetricFrame gives accuracy, macro F1, the positive class's selection rate and the support per
group; the demographic-parity difference (the largest gap in selection rate between groups) and the
equalised-odds difference (the larger of the gaps in true- and false-positive rate) are fairlearn's, for
the positive class (`--positive`, default: the second label of a two-label run); with more labels each
label is taken as the positive class in turn and the largest difference is reported, with its label.
Examples the file does not name are counted and left out; a group under MIN_SUPPORT examples is flagged,
its rates too noisy to judge.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from nnrecipe.errors import TEXT_ENCODING, UserError, existing_file, utf8_reader
from nnrecipe.reporting.classification import MIN_GROUP_SUPPORT as MIN_SUPPORT


@utf8_reader
def read_groups(path: Path) -> dict[str, str]:
    existing_file(path, "--groups: group file")
    rows = list(csv.reader(Path(path).read_text(encoding=TEXT_ENCODING).splitlines()))
    first = 1
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["example", "group"]:
        rows, first = rows[1:], 2
    if not any(rows):  # a header alone was "line 1 is not one"
        raise UserError(f"--groups {path}: no `example,group` rows")
    # Three fields or more: a text with an unquoted comma, which was split into a wrong example and group.
    bad = next(((i, r) for i, r in enumerate(rows, start=first) if r and len(r) != 2), None)
    if bad is not None:
        line, fields = bad
        raise UserError(
            f"--groups {path}: line {line} has {len(fields)} field(s), not `example,group`; put an example that "
            "holds a comma in double quotes"
        )
    return {r[0].strip(): r[1].strip() for r in rows if r}


def match(keys: list[str], groups: dict[str, str]) -> list[str | None]:
    """Each example's group: by its full key, else by its file name (image paths)."""
    by_name = {Path(k).name: g for k, g in groups.items()}
    return [groups.get(k, by_name.get(Path(k).name) if "/" in k or "\\" in k else None) for k in keys]


def group_table(y_true: np.ndarray, y_pred: np.ndarray, groups: list[str], positive: int) -> tuple[dict, dict]:
    """Per-group metrics and the two differences for one positive class (fairlearn)."""
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        selection_rate,
    )
    from sklearn.metrics import accuracy_score, f1_score

    t, p = (y_true == positive).astype(int), (y_pred == positive).astype(int)
    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "support": count},
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    macro_f1 = MetricFrame(
        metrics=lambda a, b: f1_score(a, b, average="macro", zero_division=0),
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    rate = MetricFrame(metrics=selection_rate, y_true=t, y_pred=p, sensitive_features=groups)
    by_group = {
        str(g): {
            "accuracy": float(frame.by_group.loc[g, "accuracy"]),
            "f1_macro": float(macro_f1.by_group.loc[g]),
            "selection_rate": float(rate.by_group.loc[g]),
            "support": int(frame.by_group.loc[g, "support"]),
        }
        for g in frame.by_group.index
    }
    gaps = {
        "demographic_parity_difference": float(demographic_parity_difference(t, p, sensitive_features=groups)),
        "equalized_odds_difference": float(equalized_odds_difference(t, p, sensitive_features=groups)),
    }
    return by_group, gaps


def evaluate_fairness(
    run: Any, split: str | None, groups_file: Path | None, positive: str | None = None
) -> dict[str, Any]:
    """Per-group scores of a run's predictions on a split, its groups from `groups_file` or (None) from the
    recipe's `data.group_column`; runs/<run>/fairness/report.md/json + a bar plot."""
    from nnrecipe.tasks.family import family_of

    family = family_of(run).require("fairness")
    split = split or family.splits(run.recipe()).reported()[0]
    keys = family.example_keys(run, split)  # the cheap checks first, the model's predictions after them
    if groups_file is None:
        found: list[str | None] | None = family.example_groups(run, split)
        if found is None:
            raise UserError("fairness: give --groups FILE, or name a group column in the recipe (data.group_column)")
        source = "data.group_column"
    else:
        found, source = match(keys, read_groups(groups_file)), f"--groups {groups_file}"
    keep = [i for i, g in enumerate(found) if g is not None]
    if len({found[i] for i in keep}) < 2:
        raise UserError(f"{source}: names {len(keep)} of the {len(keys)} {split} examples, in "
                        f"{len({found[i] for i in keep})} group(s); fairness compares two or more")  # fmt: skip
    names = family.inference(run).labels
    if positive is not None and positive not in names:
        raise UserError(f"--positive: one of this run's labels ({', '.join(names)}), got {positive!r}")
    probs, labels = family.probabilities(run, split)
    y_true, y_pred = labels.numpy()[keep], probs.argmax(1).numpy()[keep]
    groups = [found[i] for i in keep]
    if positive is not None or len(names) == 2:
        candidates = [names.index(positive) if positive is not None else 1]
    else:
        candidates = list(range(len(names)))
    tables = {c: group_table(y_true, y_pred, groups, c) for c in candidates}
    worst = {k: max(candidates, key=lambda c: tables[c][1][k]) for k in tables[candidates[0]][1]}
    by_group = tables[candidates[0]][0] if len(candidates) == 1 else tables[worst["demographic_parity_difference"]][0]
    report = {
        "split": split,
        "examples": len(keys),
        "grouped": len(keep),
        "ungrouped": len(keys) - len(keep),
        "positive": names[candidates[0]] if len(candidates) == 1 else None,
        "by_group": by_group,
        "differences": {k: {"value": tables[c][1][k], "positive": names[c]} for k, c in worst.items()},
        "small_groups": sorted(g for g, row in by_group.items() if row["support"] < MIN_SUPPORT),
    }
    folder = run.dir / "fairness"
    folder.mkdir(exist_ok=True)
    report["plot"] = str(plot_groups(report, folder / "groups.png"))
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    (folder / "report.md").write_text(fairness_markdown(run, report))
    return report


def fairness_markdown(run: Any, r: dict[str, Any]) -> str:
    positive = r["positive"] or "each label in turn (the largest difference shown, with its label)"
    md = [f"# Fairness by group: {run.dir.name}", "",
          f"{r['grouped']:,} of {r['examples']:,} {r['split']} examples in a group ({r['ungrouped']:,} not named by "
          f"the groups file); positive class for the rates: {positive}.", "",
          "| group | accuracy | macro F1 | selection rate | support |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for g, row in r["by_group"].items():
        flag = " (too few to judge)" if g in r["small_groups"] else ""
        md.append(f"| {g}{flag} | {row['accuracy']:.4f} | {row['f1_macro']:.4f} | {row['selection_rate']:.4f} | "
                  f"{row['support']:,} |")  # fmt: skip
    md += [""] + [f"- {k.replace('_', ' ')}: **{v['value']:.4f}** (positive class {v['positive']})"
                  for k, v in r["differences"].items()]  # fmt: skip
    if r["small_groups"]:
        md += ["", f"Groups under {MIN_SUPPORT} examples ({', '.join(r['small_groups'])}): their rates swing by "
               "several points with one example; collect more before drawing conclusions."]  # fmt: skip
    return "\n".join([*md, "", "![groups](groups.png)", ""])


def plot_groups(r: dict[str, Any], path: Path) -> Path:
    from nnrecipe.reporting.plots import plt

    groups = list(r["by_group"])
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(groups) + 2), 3.5))
    for i, metric in enumerate(("accuracy", "f1_macro", "selection_rate")):
        ax.bar(x + (i - 1) * 0.27, [r["by_group"][g][metric] for g in groups], width=0.27, label=metric)
    ax.set(xticks=x, xticklabels=groups, ylim=(0, 1), ylabel="score", title="by group")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
