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
    """Conv and linear layers. Pruning channels leaves the output layers whole, since their outputs are
    the classes (a classifier's head; a detector's RPN objectness/box outputs and its box predictor)."""
    head = {n.rsplit(".", 1)[0] for n in head_parameter_names(model)}
    if hasattr(model, "roi_heads") and hasattr(model, "rpn"):  # torchvision detectors
        head |= {
            n
            for n, _ in model.named_modules()
            if n.startswith("roi_heads.box_predictor") or n in ("rpn.head.cls_logits", "rpn.head.bbox_pred")
        }
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [(n, m) for n, m in layers if not (structured and n in head)]


def apply_pruning(model: nn.Module, amount: float, structured: bool) -> dict[str, torch.Tensor]:
    """Prune in place, make it permanent, return {parameter name: mask}."""
    layers = prunable(model, structured)
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


def sparsity(model: nn.Module, structured: bool = False) -> float:
    weights = [m.weight for _, m in prunable(model, structured)]
    return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


# task -> (the run.json key holding what inference needs, the report metric that pruning is judged by)
PRUNABLE = {
    "image_classification": ("image", "accuracy"),
    "text_classification": ("text", "accuracy"),
    "token_classification": ("text", "f1"),
    "detection": ("detection", "map"),
}


def _trained_model(run: Run, task: str) -> nn.Module:
    """The run's best weights as the task's own inference code loads them."""
    from nnrecipe.tasks import task_module

    module = task_module(task)
    if task in ("image_classification", "detection"):
        return module.inference_model(run, module._spec(run), "cpu")
    return module.inference_model(run, "cpu")[0]


def _score(run: Run, task: str, metric: str) -> tuple[str, float]:
    """(split, metric) on the test split, or on val when the run has no test split."""
    from nnrecipe.tasks import task_module

    try:
        return "test", task_module(task).evaluate(run, split="test")[metric]
    except UserError as e:
        if "no test split" not in str(e):
            raise
        return "val", task_module(task).evaluate(run, split="val")[metric]


def _start_from(recipe, task: str, model: nn.Module, path) -> None:
    """Point the fine-tuning recipe at the pruned weights, in the form each task starts from."""
    if task == "image_classification":
        save_checkpoint(path.with_suffix(".safetensors"), model.state_dict())
        recipe.model.init_from = path.with_suffix(".safetensors")
        recipe.model.freeze, recipe.model.unfreeze_at_epoch = "none", None
    elif task == "detection":
        save_checkpoint(path.with_suffix(".safetensors"), model.state_dict())
        recipe.model.weights, recipe.model.backbone_weights = path.with_suffix(".safetensors"), None
    else:  # a fully fine-tuned transformer: a model folder the recipe loads like any base model
        from transformers import AutoTokenizer

        from nnrecipe.models.hf import resolve

        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(resolve(recipe.model.name)).save_pretrained(path)
        recipe.model.name = str(path)


def prune_run(run: Run, amount: float, structured: bool = False, finetune_epochs: int = 0) -> dict[str, Any]:
    task = run.meta().get("task")
    if task not in PRUNABLE:
        raise UserError(f"{run.dir}: pruning supports {', '.join(PRUNABLE)} runs (this one: {task})")
    if not 0 < amount < 1:
        raise UserError(f"--amount: a fraction between 0 and 1 (got {amount})")
    if (
        finetune_epochs
        and task in ("text_classification", "token_classification")
        and run.recipe().model.finetune != "full"
    ):
        raise UserError(
            f"--finetune-epochs: offered for fully fine-tuned text runs; this one is "
            f"{run.recipe().model.finetune} (prune it without fine-tuning)"
        )
    key, metric = PRUNABLE[task]
    recipe = run.recipe()
    model = _trained_model(run, task)
    masks = apply_pruning(model, amount, structured)
    kind = "structured" if structured else "unstructured"
    name = f"{run.dir.name}-pruned{round(amount * 100)}{'-structured' if structured else ''}"
    new = recipe.model_copy(deep=True)
    new.track.name = name
    new.track.runs_dir = run.dir.parent
    if (run.dir.parent / name).exists():
        shutil.rmtree(run.dir.parent / name)  # a re-prune replaces the previous result
    out = create_run(new, name)
    if finetune_epochs > 0:
        from nnrecipe.tasks import task_module

        _start_from(new, task, model, out.dir / "pruned_init")
        new.train.epochs = finetune_epochs
        new.optim.lr = recipe.optim.lr * 0.1  # fine-tuning: a tenth of the original peak LR
        out.recipe_path.write_text(recipe_to_yaml(new))  # the run's recipe is the fine-tuning one
        task_module(task).train(new, out, callbacks=[KeepMasks(masks)])
    else:
        out.update_meta(status="finished", task=task, **{key: run.meta()[key]})
        save_checkpoint(out.best_checkpoint, with_prefix(model.state_dict(), "model"))
    split, after = _score(out, task, metric)
    pruned = _trained_model(out, task)
    report = json.loads((run.dir / "report.json").read_text()) if (run.dir / "report.json").is_file() else {}
    before = report.get(split, {}).get(metric)
    stats = {
        "method": kind,
        "amount": amount,
        "sparsity": sparsity(pruned, structured),
        "finetune_epochs": finetune_epochs,
        "metric": f"{split} {metric}",
        "before": before,
        "after": after,
        "source_run": str(run.dir),
    }
    if metric == "accuracy" and split == "test":  # the names earlier versions used
        stats |= {"test_accuracy_before": before, "test_accuracy_after": after}
    out.update_meta(pruning=stats)
    console.print(
        f"pruned ({kind}, {amount:.0%}): sparsity {stats['sparsity']:.1%}, {split} {metric} "
        f"{before if before is None else round(before, 4)} -> {after if after is None else round(after, 4)}; run {out.dir}",
        soft_wrap=True,
    )
    return stats | {"run": str(out.dir)}
