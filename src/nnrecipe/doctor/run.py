"""Run every check for a recipe, write doctor/report.md (+ report.json and PNGs), return the verdicts."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from nnrecipe.doctor import checks
from nnrecipe.doctor.checks import FAIL, Check
from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError, free_folder
from nnrecipe.tasks.family import get_family

WHY = {
    1: "Spend time with the data before touching a model: imbalance, duplicates across splits and broken files "
    "decide what the final numbers mean, and no architecture fixes them.",
    2: "Look at the exact tensors the model receives, after augmentation and normalisation. This is the only place "
    "where pipeline bugs (wrong channel order, labels shifted by one, augmentation that destroys the content) are visible.",
    3: "A freshly initialised classifier should be maximally unsure: its loss equals the entropy of the class prior. "
    "A different value means the initialisation is fighting the first steps of training.",
    4: "Train once on the real inputs and once on inputs set to zero. If the real model is not clearly better, the "
    "network is not extracting anything from the inputs, whatever the loss curve suggests.",
    5: "A model that cannot drive the loss on a handful of examples to zero will not learn the data set. This isolates "
    "optimisation bugs from generalisation questions.",
    6: "Backpropagate from one sample's output and check that no other sample's input receives gradient. A wrong "
    "view/transpose that mixes the batch trains without error and silently learns the wrong thing.",
    7: "Sweep the learning rate exponentially and watch the loss: where it falls fastest is a good place to start; the "
    "recipe's rate should be near it.",
    8: "After a few steps every trainable layer should receive a gradient of sensible size and most ReLUs should be "
    "alive: dead, exploding or missing gradients show up here long before they show in the loss curve.",
    9: "The same seed must give the same losses, or no later experiment can be compared or bisected.",
}


def run_doctor(recipe, out_dir: Path) -> list[Check]:
    out_dir = Path(out_dir)
    check_report_folder(out_dir)
    started = time.perf_counter()
    family = get_family(recipe.task).require("doctor")
    plan = family.doctor(recipe)
    out_dir.mkdir(parents=True, exist_ok=True)  # once the data loaded: a refused check left an empty folder
    subject = plan.subject
    budget = subject.budget
    data_steps = [lambda check=check: check(out_dir) for check in plan.data_checks]
    steps = [
        *data_steps,
        lambda: checks.loss_at_init(subject),
        lambda: checks.input_independent_baseline(subject, budget.baseline),
        lambda: checks.overfit_one_batch(subject, budget.overfit),
        lambda: checks.batch_independence(subject),
        lambda: checks.lr_range_test(subject, out_dir, budget.lr_range),
        lambda: checks.gradient_health(subject, budget.gradients),
        lambda: checks.determinism(subject, budget.determinism),
    ]
    results = []
    for step in steps:
        t0 = time.perf_counter()
        result = step()
        result.seconds = round(time.perf_counter() - t0, 2)
        results.append(result)
        colour = {"pass": "green", "warn": "yellow", "fail": "red"}[result.verdict]
        console.print(f"[{colour}]{result.verdict:4s}[/{colour}]  {result.number}. {result.name}: ", end="")
        console.print(f"{result.figure} ({result.seconds:.1f} s)", markup=False)
    write_report(results, out_dir, time.perf_counter() - started)
    return results


def check_report_folder(out_dir: Path) -> None:
    """--out is a new or empty folder, or one an earlier doctor wrote: `--out runs/<run>` replaced the run's
    own report.json and report.md."""

    def doctors(folder: Path) -> bool:
        report = folder / "report.md"
        return report.is_file() and report.read_text(errors="replace").startswith("# nnrecipe doctor")

    if not free_folder(out_dir, doctors):
        raise UserError(f"--out {out_dir}: holds other files; give a new or empty folder, or an earlier doctor's")


def write_report(results: list[Check], out_dir: Path, seconds: float) -> Path:
    (out_dir / "report.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    lines = [
        "# nnrecipe doctor",
        "",
        f"{sum(r.verdict == 'pass' for r in results)} pass, "
        f"{sum(r.verdict == 'warn' for r in results)} warn, {sum(r.verdict == FAIL for r in results)} fail "
        f"({seconds:.0f} s).",
        "",
        "| # | check | verdict | figure | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.number} | {r.name} | **{r.verdict}** | {r.figure} | {r.seconds:.1f} |" for r in results]
    for r in results:
        lines += [
            "",
            f"## {r.number}. {r.name}: {r.verdict}",
            "",
            f"*Why:* {WHY[r.number]}",
            "",
            f"*Measured:* {r.figure}",
        ]
        if r.advice:
            lines += ["", f"*What to do:* {r.advice}"]
        lines += [""] + [f"![{p}]({p})" for p in r.plots] + r.details
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
