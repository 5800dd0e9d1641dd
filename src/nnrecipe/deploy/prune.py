"""Pruning through torch.nn.utils.prune: global magnitude (unstructured) or L2 channel (structured)
pruning, optional fine-tuning with the masks held, and the result saved as a new run.

The pruned model is a run directory like any other (`<run>-pruned50`), so evaluate, predict, export
and serve work on it unchanged. Pruning is made permanent before saving: the checkpoint holds plain
weights with zeros, not weight_orig/weight_mask pairs.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from nnrecipe.engine.checkpoint import save_checkpoint, with_prefix
from nnrecipe.engine.loop import Callback, console
from nnrecipe.errors import UserError
from nnrecipe.models import head_parameter_names
from nnrecipe.recipe import recipe_to_yaml
from nnrecipe.runs import Run, create_run


class KeepMasks(Callback):
    """Re-applies the pruning masks after every optimiser step, so fine-tuning cannot regrow weights."""

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks

    def after_step(self, trainer) -> None:
        params = dict(trainer.acc.unwrap_model(trainer.model).named_parameters())
        with torch.no_grad():
            for name, mask in self.masks.items():
                params[name].mul_(mask.to(params[name].device))


def prunable(model: nn.Module, structured: bool) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers; the classifier head is left whole when pruning channels (its outputs are the classes)."""
    head = {n.rsplit(".", 1)[0] for n in head_parameter_names(model)}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [(n, m) for n, m in layers if not (structured and n in head)]


def apply_pruning(model: nn.Module, amount: float, structured: bool) -> dict[str, torch.Tensor]:
    """Prune in place, make it permanent, return {parameter name: mask}."""
    layers = prunable(model, structured)
    if structured:
        for _, m in layers:
            prune.ln_structured(m, "weight", amount=amount, n=2, dim=0)  # whole output channels / units
    else:
        prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=amount)
    masks = {}
    for name, m in layers:
        masks[f"{name}.weight" if name else "weight"] = m.weight_mask.detach().clone()
        prune.remove(m, "weight")
    return masks


def sparsity(model: nn.Module, structured: bool = False) -> float:
    weights = [m.weight for _, m in prunable(model, structured)]
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


def prune_run(run: Run, amount: float, structured: bool = False, finetune_epochs: int = 0) -> dict[str, Any]:
    from nnrecipe.tasks import image_classification as image

    if run.meta().get("task") != "image_classification":
        raise UserError(f"{run.dir}: pruning supports image classification runs so far")
    if not 0 < amount < 1:
        raise UserError(f"--amount: a fraction between 0 and 1 (got {amount})")
    recipe, spec = run.recipe(), image._spec(run)
    model = image.inference_model(run, spec, "cpu")
    masks = apply_pruning(model, amount, structured)
    kind = "structured" if structured else "unstructured"
    name = f"{run.dir.name}-pruned{round(amount * 100)}{'-structured' if structured else ''}"
    new = recipe.model_copy(deep=True)
    new.track.name = name
    new.track.runs_dir = run.dir.parent
    if (run.dir.parent / name).exists():
        shutil.rmtree(run.dir.parent / name)  # a re-prune replaces the previous result
    out = create_run(new, name)
    weights = out.dir / "pruned_init.safetensors"
    save_checkpoint(weights, model.state_dict())
    if finetune_epochs > 0:
        new.model.init_from = weights
        new.model.freeze, new.model.unfreeze_at_epoch = "none", None
        new.train.epochs = finetune_epochs
        new.optim.lr = recipe.optim.lr * 0.1  # fine-tuning: a tenth of the original peak LR
        out.recipe_path.write_text(recipe_to_yaml(new))  # the run's recipe is the fine-tuning one
        result = image.train(new, out, callbacks=[KeepMasks(masks)])
        accuracy = result.get("accuracy")
    else:
        out.update_meta(status="finished", task="image_classification", image=spec.__dict__)
        save_checkpoint(out.best_checkpoint, with_prefix(model.state_dict(), "model"))
        accuracy = image.evaluate(out, split="test")["accuracy"]
    pruned = image.inference_model(out, spec, "cpu")
    before = json.loads((run.dir / "report.json").read_text()).get("test", {}).get("accuracy") if (run.dir / "report.json").is_file() else None
    stats = {"method": kind, "amount": amount, "sparsity": sparsity(pruned, structured), "finetune_epochs": finetune_epochs,
             "test_accuracy_before": before, "test_accuracy_after": accuracy, "source_run": str(run.dir)}
    out.update_meta(pruning=stats)
    console.print(f"pruned ({kind}, {amount:.0%}): sparsity {stats['sparsity']:.1%}, test accuracy "
                  f"{before if before is None else round(before, 4)} -> {accuracy:.4f}; run {out.dir}", soft_wrap=True)
    return stats | {"run": str(out.dir)}
