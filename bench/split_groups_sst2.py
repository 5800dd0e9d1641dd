"""What a flat row split of SST-2's training file hides: the same recipe (`recipes/sst2-minilm.yaml`, its
first 4,445 rows, 10% held out) trained with `data.split_groups: none` (a stratified row split) and with
`containment` (sentences and their sub-phrases kept on one side), side by side.

Printed per split: how many validation texts contain, or sit inside, a training text (the leak), and the
validation accuracy of the model trained on the rest. The grouped figure is the honest one; the gap is how
much the flat split flatters.

    python bench/split_groups_sst2.py --data ../shared/datasets/sst2/train.tsv [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.data.containment import contained_across
from nnrecipe.recipe import load_recipe
from nnrecipe.runs import train_new_run
from nnrecipe.tasks import get_family

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-split-groups"))
    args = ap.parse_args()
    print(cpu_model())
    family = get_family("text_classification")
    scores: dict[str, list[float]] = {"none": [], "containment": []}
    for seed in args.seeds:
        for mode in scores:
            overrides = [f"data.train={args.data.resolve()}", f"data.split_groups={mode}", f"train.seed={seed}",
                         f"data.split_seed={seed}", f"track.runs_dir={args.runs}", "track.progress=false"]  # fmt: skip
            recipe = load_recipe(ROOT / "recipes" / "sst2-minilm.yaml", overrides)
            splits = family.splits(recipe)
            leak = len(contained_across(splits.val.texts, splits.train.texts))
            _, result = train_new_run(family, recipe, f"sst2-{mode}-s{seed}")
            accuracy = max(row["val_accuracy"] for row in result["history"])
            scores[mode].append(accuracy)
            print(f"seed {seed} split_groups {mode:11s}: {len(splits.train):,} train / {len(splits.val):,} val, "
                  f"{leak} val texts ({leak / len(splits.val):.1%}) contain or sit in a training text; "
                  f"best val accuracy {accuracy:.4f}", flush=True)  # fmt: skip
    for mode, xs in scores.items():
        spread = statistics.stdev(xs) if len(xs) > 1 else 0.0
        print(f"{mode}: val accuracy {statistics.mean(xs):.4f} +/- {spread:.4f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
