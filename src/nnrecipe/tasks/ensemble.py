"""Ensembles: a run whose model is several trained runs of one family, their class probabilities averaged.

An ensemble run is an ordinary run directory (recipe.yaml copied from its first member, run.json naming
the members and their weights) without weights of its own: the family's `inference` builds each member
with `trained` and wraps them in `MeanProbabilities`, so evaluate, predict, export (one graph holding
every member) and serve take it like any run. Members must share the family, the labels, the data and
the inputs (the family's `ensemble_inputs` spec keys, and the tokenizer's vocabulary).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from nnrecipe.engine.config import check_folder_name
from nnrecipe.errors import UserError
from nnrecipe.reporting import read_report
from nnrecipe.runs import Run, given_twice, open_run
from nnrecipe.tasks.family import Inference, TaskFamily, family_of


def is_ensemble(run: Run) -> bool:
    return "ensemble" in run.meta()


def refuse_ensemble(run: Run, verb: str) -> None:
    """One line for the verbs that need one network's weights (prune, merge, resume)."""
    if is_ensemble(run):
        raise UserError(f"{verb}: {run.dir} is an ensemble; {verb} one of its members instead")


def members_of(run: Run) -> tuple[list[Run], list[float]]:
    entry = run.meta()["ensemble"]
    return [open_run(p) for p in entry["members"]], list(entry["weights"])


def ensemble_inference(family: TaskFamily, run: Run, device: str = "cpu") -> Inference:
    """Every member's trained model behind one module averaging their probabilities."""
    from nnrecipe.models.ensemble import MeanProbabilities

    members, weights = members_of(run)
    infs = [family.trained(m, device) for m in members]
    check_inputs(family, members, infs)
    model = MeanProbabilities([i.model for i in infs], weights).to(device).eval()
    spec = run.spec()
    first = infs[0].spec
    spec = dataclasses.replace(first, model=spec["model"]) if dataclasses.is_dataclass(first) else first | spec
    return Inference(model, infs[0].labels, spec, infs[0].tokenizer)


def check_inputs(family: TaskFamily, members: list[Run], infs: list[Inference]) -> None:
    """The members read inputs the same way and answer in the same labels, or one line saying where not."""
    first, name0 = infs[0], members[0].dir.name
    for run, inf in zip(members[1:], infs[1:]):
        if inf.labels != first.labels:
            raise UserError(
                f"ensemble: {run.dir.name} predicts other labels than {name0} ({inf.labels} vs {first.labels})"
            )
        a, b = spec_dict(first.spec), spec_dict(inf.spec)
        for key in family.ensemble_inputs:
            if a.get(key) != b.get(key):
                raise UserError(
                    f"ensemble: {run.dir.name} and {name0} prepare inputs differently ({key}: {b.get(key)} vs {a.get(key)})"
                )
        if (first.tokenizer is None) != (inf.tokenizer is None) or (
            first.tokenizer is not None and first.tokenizer.get_vocab() != inf.tokenizer.get_vocab()
        ):
            raise UserError(
                f"ensemble: {run.dir.name} and {name0} tokenize differently (members must share one tokenizer: "
                "the same pretrained model, or from-scratch runs fitted to the same data)"
            )


def spec_dict(spec: Any) -> dict[str, Any]:
    return dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else dict(spec)


def create_ensemble(
    paths: list[Path], name: str | None = None, weights: list[float] | None = None, runs_dir: Path | None = None
) -> Run:
    """A new ensemble run of the runs at `paths`, checked, then scored on its test (else val) split next to
    each member."""
    if len(paths) < 2:
        raise UserError("ensemble: give two runs or more")
    members = [open_run(p) for p in paths]
    twice = given_twice([m.dir for m in members])  # one run twice was an "ensemble" of one model, reported as two
    if twice is not None:
        raise UserError(f"ensemble: {twice} is given twice; weight a member with --weights instead")
    families = {family_of(m).name for m in members}
    if len(families) > 1:
        raise UserError(f"ensemble: the runs belong to different tasks ({', '.join(sorted(families))})")
    family = family_of(members[0]).require("ensemble")
    for m in members:
        if is_ensemble(m):
            raise UserError(f"ensemble: {m.dir} is an ensemble itself; list its members instead")
        m.spec()  # a clear error for a run that has not finished training
    if weights is None:
        weights = [1.0] * len(members)
    if len(weights) != len(members) or not all(0 <= w < math.inf for w in weights) or sum(weights) <= 0:  # nan, inf
        raise UserError(f"--weights: one non-negative weight per run ({len(members)}), not all zero (got {weights})")
    recipes = [m.raw_recipe() for m in members]
    for m, r in zip(members[1:], recipes[1:]):
        if r.get("data") != recipes[0].get("data"):
            raise UserError(
                f"ensemble: {m.dir.name} was trained on other data than {members[0].dir.name} "
                "(their recipes' data sections differ), so no split is held out from both"
            )
    run = new_run_dir(members[0], name, runs_dir)
    total = sum(weights)
    models = [m.meta()["spec"].get("model", "?") for m in members]
    run.update_meta(
        status="finished",
        task=family.name,
        recipe_name="ensemble",
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        spec=members[0].meta()["spec"] | {"model": f"ensemble of {len(members)}: {', '.join(models)}"},
        ensemble={"members": [str(m.dir.resolve()) for m in members], "weights": [w / total for w in weights]},
        weights=f"an ensemble of {len(members)} runs ({', '.join(m.dir.name for m in members)}): "
        + "their probabilities averaged"
        + ("" if len(set(weights)) == 1 else f" with weights {', '.join(f'{w / total:.3g}' for w in weights)}"),
    )
    try:
        family.inference(run)  # the compatibility checks run here, before anything is scored
    except UserError:
        shutil.rmtree(run.dir)
        raise
    score_members(run, family, members)
    family.evaluate(run)
    return run


def new_run_dir(first: Run, name: str | None, runs_dir: Path | None) -> Run:
    parent = Path(runs_dir) if runs_dir is not None else first.dir.parent
    path = parent / (check_folder_name(name, "--name") or f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}")
    if path.exists() and any(path.iterdir()):
        raise UserError(f"ensemble: {path} exists already; choose another --name")
    path.mkdir(parents=True, exist_ok=True)
    recipe = first.raw_recipe()
    recipe.setdefault("track", {})["name"] = path.name
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return Run(path)


def score_members(run: Run, family: TaskFamily, members: list[Run]) -> None:
    """Each member's primary metric on the split the ensemble is reported on (their own report's entry,
    else a fresh evaluation), kept in run.json so every later report of that split shows the comparison."""
    split, _ = family.splits(run.recipe()).reported()
    scores = {}
    for m in members:
        entry = read_report(m.dir).get(split)
        if entry is None or family.metric.name not in entry:
            entry = family.evaluate(m, split)
        scores[m.dir.name] = entry[family.metric.name]
    run.update_meta(member_scores={split: {"metric": family.metric.name, "scores": scores}})
