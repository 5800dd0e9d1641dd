"""`nnrecipe calibrate runs/<run>`: temperature scaling fitted on the validation split (Guo et al., 2017).

The temperature goes into run.json; from then on the run's model divides its logits by it (in
`TaskFamily.inference`), so evaluate, predict, serve and export (the division folded into the graph) all
use it. Accuracy cannot change (argmax is untouched); the report shows the calibration of the reported
split before and after.
"""

from __future__ import annotations

from typing import Any

from nnrecipe.engine.loop import console
from nnrecipe.errors import UserError
from nnrecipe.models.calibrated import fit_temperature
from nnrecipe.reporting.calibration import calibration_summary
from nnrecipe.runs import Run
from nnrecipe.tasks.family import family_of


def calibrate_run(run: Run) -> dict[str, Any]:
    family = family_of(run).require("calibrate")
    splits = family.splits(run.recipe())
    if splits.val is None:
        raise UserError(f"calibrate: {run.dir} has no validation split to fit a temperature on (set data.val_fraction)")
    probs, labels = family.probabilities(run, "val")
    before = run.meta().get("temperature") or 1.0
    t = fit_temperature(probs, labels)
    fitted = (probs.clamp_min(1e-12).log() / t).softmax(1)
    val = {"before": calibration_summary(probs, labels)["ece"], "after": calibration_summary(fitted, labels)["ece"]}
    split, part = splits.reported()
    reported_before = family.evaluate(run, split)["calibration"]["ece"]
    run.update_meta(
        temperature=before * t,
        calibrated={"val_ece": val, "split": split, "ece_before": reported_before, "previous_temperature": before},
    )
    after = family.evaluate(run, split)["calibration"]["ece"]
    reported = f"; {split} ECE {reported_before:.4f} -> {after:.4f}" if split != "val" else ""  # said twice
    console.print(
        f"temperature {before * t:.4g} (fitted on {len(labels)} validation examples): validation ECE "
        f"{val['before']:.4f} -> {val['after']:.4f}{reported}"
    )
    return {
        "temperature": before * t,
        "val_ece": val,
        "split": split,
        "ece_before": reported_before,
        "ece_after": after,
    }
