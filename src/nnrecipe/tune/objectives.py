"""What a study can optimise: any metric a run logs (`val_accuracy`, `val_loss`, ...) or a property measured on
the trial's trained model, so that a multi-objective study can trade accuracy against size or speed.

Measured objectives ask the registry, never a family's name: `parameters` counts the trained model's values
(`TaskFamily.inference`; the best checkpoint's tensors for a family without it, such as RL); `latency_ms` times
one example through the model the family would export (`TaskFamily.export_subject`, its first validation
input), on CPU, median of repeated calls after a warm-up.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from nnrecipe.errors import RecipeError
from nnrecipe.runs import Run
from nnrecipe.tasks.family import DetectionsExport, TaskFamily, Unsupported


def count_parameters(family: TaskFamily, run: Run) -> float:
    try:  # the model the family predicts with
        return float(sum(p.numel() for p in family.inference(run).model.parameters()))
    except Unsupported:
        pass
    from safetensors import safe_open

    with safe_open(str(run.best_checkpoint), "pt") as f:
        return float(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def latency_ms(family: TaskFamily, run: Run, repeats: int = 20) -> float:
    """Milliseconds for one example through the exported model (CPU), median of `repeats` after a warm-up."""
    subject = family.export_subject(run)
    model = subject.model.eval()
    if isinstance(subject, DetectionsExport):
        args = ([subject.images[0]],)
    else:
        args = tuple(t[:1] for t in subject.args(subject.batches[0]))
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            start = time.perf_counter()
            model(*args)
            if i >= 3:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


# name -> (its direction, how it is measured on a trained run, the verb the family must offer)
MEASURED: dict[str, tuple[str, Callable[[TaskFamily, Run], float], str | None]] = {
    "parameters": ("minimize", count_parameters, None),
    "latency_ms": ("minimize", latency_ms, "export"),
}


def check_measurable(family: TaskFamily, names: list[str]) -> None:
    """Before any trial: a measured objective the family cannot measure is one line."""
    for name in names:
        verb = MEASURED.get(name, (None, None, None))[2]
        if verb is not None and not family.offers(verb):
            raise RecipeError(f"--metric {name}: needs a family that offers {verb} ({family.name} does not)")


def measure(family: TaskFamily, run: Run, names: list[str]) -> dict[str, Any]:
    return {name: MEASURED[name][1](family, run) for name in names if name in MEASURED}
