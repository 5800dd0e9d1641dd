"""`nnrecipe merge`: a text or NER run as a plain Hugging Face model folder, peft weights folded in,
checked to give the run's own logits before it is kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from nnrecipe.errors import UserError, free_folder
from nnrecipe.models.calibrated import uncalibrated
from nnrecipe.models.hf import merged
from nnrecipe.runs import Run
from nnrecipe.tasks.ensemble import refuse_ensemble
from nnrecipe.tasks.family import family_of

PROBE = [
    "The film is a charming journey through Paris with Emma Thompson.",
    "A dull, tedious script; nothing in it works.",
    "Reuters reported that Apple Inc. opened an office in Berlin on Monday.",
]
TOLERANCE = 1e-5
MARK = "nnrecipe-merge.json"  # in every folder a merge writes: what a later merge may replace


def replaceable(out: Path, default: Path) -> None:
    """A merge replaces its folder whole; refuse a folder it did not write (`--out .` removed the current
    folder once the merge had succeeded; a file there ended in a traceback)."""
    if out == default or free_folder(out, lambda folder: (folder / MARK).is_file()):
        return
    raise UserError(
        f"--out {out}: exists and is not a folder an earlier merge wrote; choose a new folder (nothing was changed)"
    )


def merge_run(run: Run, out: Path | None = None) -> tuple[Path, float]:
    """Write the merged model folder; return it and the largest |logit difference| on probe sentences."""
    family = family_of(run).require("merge")
    refuse_ensemble(run, "merge")
    default = run.dir / "merged"
    out = Path(out) if out is not None else default
    replaceable(out, default)
    auto = family.merge_class()
    inf = family.inference(run)
    model, tokenizer, meta = uncalibrated(inf.model), inf.tokenizer, inf.spec
    if not hasattr(model, "save_pretrained"):
        raise UserError(
            f"{run.dir}: merge writes a Hugging Face model folder, and {meta['model']} is not a Hugging Face "
            "model (nothing to fold in either); export it with `nnrecipe export` instead"
        )
    batch = tokenizer(PROBE, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        plain = merged(model, meta["finetune"])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / MARK).write_text(json.dumps({"run": str(run.dir.resolve()), "finetune": meta["finetune"]}))
    reloaded = auto.from_pretrained(str(tmp)).eval()
    with torch.no_grad():
        diff = (reloaded(**batch).logits - expected).abs().max().item()
    if not diff <= TOLERANCE:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"merged model differs from the run by {diff:.2e} (> {TOLERANCE:g}) on probe sentences; not saved"
        )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out, diff
