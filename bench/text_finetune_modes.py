"""Every fine-tuning mode on the same SST-2 subset: trainable parameters, held-out accuracy, speed.

The recipe is recipes/sst2-minilm.yaml (4,000 train / 445 held-out sentences, 3 epochs, bs 32,
max_length 64); only model.finetune and the learning rate change, each mode at a learning rate usual
for it (parameter-efficient methods train few weights and want larger steps).

    python bench/text_finetune_modes.py --train data/sst2/train.tsv [--modes full lora ia3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

text = get_family("text_classification")

ROOT = Path(__file__).resolve().parents[1]
LR = {"full": 5e-5, "frozen": 2e-2, "lora": 5e-4, "adalora": 3e-3, "prefix": 1e-2, "ia3": 3e-3}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="SST-2 train.tsv")
    ap.add_argument("--modes", nargs="+", default=list(LR), choices=list(LR))
    args = ap.parse_args()
    rows = []
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            recipe = load_recipe(
                ROOT / "recipes/sst2-minilm.yaml",
                [
                    f"data.train={args.train}",
                    f"model.finetune={mode}",
                    f"optim.lr={LR[mode]}",
                    f"track.runs_dir={tmp}",
                    "track.progress=false",
                    "track.plots=false",
                    "track.tensorboard=false",
                ],
            )
            run = create_run(recipe, mode)
            result = text.train(recipe, run)
            meta = run.meta()["text"]
            seconds = sum(r["epoch_seconds"] for r in result["history"])
            examples = sum(r["samples_per_s"] * r["epoch_seconds"] for r in result["history"])
            rows.append(
                (
                    mode,
                    LR[mode],
                    meta["trainable_parameters"],
                    meta["total_parameters"],
                    result["accuracy"],
                    examples / seconds,
                    seconds,
                )
            )
            print(f"{mode:8s} done: accuracy {result['accuracy']:.4f}", flush=True)
    print(f"\nCPU: {cpu_model()}")
    print("\n| mode | lr | trainable parameters | held-out accuracy | training samples/s | training time |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, lr, trainable, total, acc, sps, sec in rows:
        print(f"| {mode} | {lr:g} | {trainable:,} ({trainable / total:.2%}) | {acc:.4f} | {sps:.0f} | {sec:.0f} s |")


if __name__ == "__main__":
    main()
