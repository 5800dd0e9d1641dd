"""Test accuracy of the bundled digits recipes over several seeds (mean +/- std), with training time.

python bench/digits_models.py                      # all digits recipes, seeds 0 1 2
python bench/digits_models.py --recipes digits-convnet --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", nargs="+", default=["digits-convnet", "digits-lenet5", "digits-resnet18"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            accs, secs = [], []
            for seed in args.seeds:
                recipe = load_recipe(
                    ROOT / "recipes" / f"{name}.yaml",
                    [f"train.seed={seed}", f"track.runs_dir={tmp}", "track.progress=false", "track.plots=false"],
                )
                start = time.perf_counter()
                result = get_family("image_classification").train(recipe, create_run(recipe, name))
                secs.append(time.perf_counter() - start)
                accs.append(result["accuracy"])
            rows.append(
                f"{name:18s} test accuracy {statistics.mean(accs):.4f} +/- {statistics.stdev(accs) if len(accs) > 1 else 0:.4f} "
                f"(seeds {args.seeds}: {', '.join(f'{a:.4f}' for a in accs)}), {statistics.mean(secs):.1f} s per run"
            )
    print(f"CPU: {cpu_model()}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
