"""Weight averaging and ensembles measured: one recipe trained over seeds as it is, as an ensemble of those
runs, and with SWA (same seeds, same epochs), each scored on the same held-out split (test, else val).

The peer is the single model itself, run in the same script: the figures are mean +/- sample std over
seeds for the single and SWA models, and the one ensemble of all the single runs.

    python bench/averaging.py recipes/cifar10-convnet.yaml --seeds 0-4 \
        --set data.source=imagefolder --set data.path=../shared/datasets/cifar10-jpeg/train \
        --set data.test_fraction=0.1 --swa start_epoch=11,lr=0.01 [--swa-seeds 0-2]
    python bench/averaging.py recipes/sst2-minilm.yaml --seeds 0-2 \
        --set data.train=../shared/datasets/sst2/train.tsv --swa start_epoch=2,lr=2e-5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe
from nnrecipe.seeds import parse_seeds, train_seeds
from nnrecipe.tasks import get_family


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--swa-seeds", default=None, help="seeds of the SWA runs (default: --seeds)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--swa", default="start_epoch=11,lr=0.01", help="train.swa fields, comma-separated")
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-averaging"))
    args = ap.parse_args()
    seeds = parse_seeds([args.seeds])
    swa_seeds = parse_seeds([args.swa_seeds]) if args.swa_seeds else seeds
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = [*args.overrides, f"track.runs_dir={args.runs}", "track.progress=false", "track.tensorboard=false"]
    swa = [f"train.swa.{item}" for item in args.swa.split(",")]
    results = {}
    for label, extra, ensemble, these in (("single", [], True, seeds), ("swa", swa, False, swa_seeds)):
        recipe = load_recipe(args.recipe, [*common, *extra, f"track.name={args.recipe.stem}-{label}-{stamp}"])
        start = time.perf_counter()
        results[label] = train_seeds(recipe, args.recipe.stem, these, ensemble=ensemble)
        results[label]["seconds"] = time.perf_counter() - start
    metric = get_family(recipe.task).metric.name
    single, averaged = (results[k]["metrics"][metric] for k in ("single", "swa"))
    ens = results["single"]["ensemble"][metric]
    lines = [
        f"{args.recipe.name}, seeds {seeds}, {metric} on the held-out split; CPU: {cpu_model()}",
        f"single model   {single['mean']:.4f} +/- {single['std']:.4f}   ({', '.join(f'{v:.4f}' for v in single['values'])})",
        f"SWA ({args.swa}), seeds {swa_seeds}   {averaged['mean']:.4f} +/- {averaged['std']:.4f}   "
        f"({', '.join(f'{v:.4f}' for v in averaged['values'])})",
        f"ensemble of the {len(seeds)} single runs   {ens:.4f}   ({ens - single['mean']:+.4f} over their mean)",
        f"wall: single runs {results['single']['seconds']:.0f} s (with the ensemble), SWA runs {results['swa']['seconds']:.0f} s",
    ]
    print("\n".join(lines))
    out = args.runs / f"averaging-{args.recipe.stem}-{stamp}.json"
    out.write_text(json.dumps({"lines": lines, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
