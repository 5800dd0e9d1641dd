"""Pruning through torch.nn.utils.prune: global magnitude (unstructured) or L2 channel (structured)
pruning, optional fine-tuning with the masks held, and the result saved as a new run.

The pruned model is a run directory like any other (`<run>-pruned50`), so evaluate, predict, export
and serve work on it unchanged. Pruning is made permanent before saving: the checkpoint holds plain
weights with zeros, not weight_orig/weight_mask pairs.
"""

from __future__ import annotations

import shutil
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from nnrecipe.deploy.artefact import replacing
from nnrecipe.engine.checkpoint import save_checkpoint, with_prefix
from nnrecipe.engine.loop import Callback, console
from nnrecipe.errors import UserError
from nnrecipe.models.calibrated import uncalibrated
from nnrecipe.runs import Run, create_run
from nnrecipe.tasks.ensemble import refuse_ensemble
from nnrecipe.tasks.family import TaskFamily, family_of


class KeepMasks(Callback):
    """Re-applies the pruning masks after every optimiser step, so fine-tuning cannot regrow weights."""

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks

    def after_step(self, trainer) -> None:
        params = dict(trainer.acc.unwrap_model(trainer.model).named_parameters())
        with torch.no_grad():
            for name, mask in self.masks.items():
                params[name].mul_(mask.to(params[name].device))


def prunable(model: nn.Module, structured: bool, keep_whole: set[str] = frozenset()) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers. Pruning channels leaves `keep_whole` (the family's output layers: their
    outputs are the answers) untouched."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [(n, m) for n, m in layers if not (structured and n in keep_whole)]


def apply_pruning(
    model: nn.Module, amount: float, structured: bool, keep_whole: set[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """Prune in place, make it permanent, return {parameter name: mask}."""
    layers = prunable(model, structured, keep_whole)
    if structured:
        for _, m in layers:
            prune.ln_structured(m, "weight", amount=amount, n=2, dim=0)  # whole output channels / units
    else:
        prune.global_unstructured(
            [(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=amount
        )
    masks = {}
    for name, m in layers:
        masks[f"{name}.weight" if name else "weight"] = m.weight_mask.detach().clone()
        prune.remove(m, "weight")
    return masks


def sparsity(model: nn.Module, structured: bool = False, keep_whole: set[str] = frozenset()) -> float:
    weights = [m.weight for _, m in prunable(model, structured, keep_whole)]
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


def _score(family: TaskFamily, run: Run) -> tuple[str, float]:
    """(split, primary metric) of the run's trained model on test, else validation."""
    splits = family.splits(run.recipe())
    split = "test" if splits.test is not None else "val"
    return split, family.evaluate(run, split=split)[family.metric.name]


def prune_run(run: Run, amount: float, structured: bool = False, finetune_epochs: int = 0) -> dict[str, Any]:
    family = family_of(run).require("prune")
    refuse_ensemble(run, "prune")
    if not 0 < amount < 1:
        raise UserError(f"--amount: a fraction between 0 and 1 (got {amount})")
    recipe = run.recipe()
    model = uncalibrated(family.inference(run).model)  # a pruned copy is calibrated again, if at all
    keep_whole = family.prune_keep_whole(model)
    new = recipe.model_copy(deep=True)
    if finetune_epochs > 0:  # refused before anything is written when the run cannot be fine-tuned
        family.check_prune_finetune(recipe)
    masks = apply_pruning(model, amount, structured, keep_whole)
    kind = "structured" if structured else "unstructured"
    # The amount as given (four significant digits): rounded to a whole percent, 0.999 was "pruned100", and a
    # prune at 0.504 replaced the run of one at 0.5.
    percent = f"{amount * 100:.4g}"
    name = f"{run.dir.name}-pruned{percent}{'-structured' if structured else ''}"
    name += f"-ft{finetune_epochs}" if finetune_epochs else ""  # a fine-tuned prune replaced the plain one
    new.track.name = name
    new.track.runs_dir = run.dir.parent
    with replacing(run.dir.parent / name):  # a re-prune replaces the previous result, once it has succeeded
        out = create_run(new, name)
        if finetune_epochs > 0:
            family.prune_start(new, model, out.dir / "pruned_init")
            new.train.epochs = finetune_epochs
            new.optim.lr = recipe.optim.lr * 0.1  # fine-tuning: a tenth of the original peak LR
            out.recipe_path.write_text(new.to_yaml())  # the run's recipe is the fine-tuning one
            family.train(new, out, callbacks=[KeepMasks(masks)])
        else:
            out.update_meta(status="finished", spec=run.meta()["spec"])
            for path in family.run_files(run):
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, out.dir / path.name)
            save_checkpoint(out.best_checkpoint, with_prefix(model.state_dict(), "model"))
        split, after = _score(family, out)
        pruned = family.inference(out).model
        before = run.report().get(split, {}).get(family.metric.name)
        stats = {
            "method": kind,
            "amount": amount,
            "sparsity": sparsity(pruned, structured, keep_whole),
            "finetune_epochs": finetune_epochs,
            "metric": f"{split} {family.metric.name}",
            "before": before,
            "after": after,
            "source_run": str(run.dir),
        }
        out.update_meta(pruning=stats)
    shown = lambda v: v if v is None else round(v, 4)
    console.print(
        f"pruned ({kind}, {percent}%): sparsity {stats['sparsity']:.1%}, {split} {family.metric.name} "
        f"{shown(before)} -> {shown(after)}; run {out.dir}",
        soft_wrap=True,
    )
    return stats | {"run": str(out.dir)}
