"""What pruning saves: the same `nnrecipe tune` search run twice per seed, without a pruner and with ASHA
(Optuna's successive halving, fed the validation accuracy after every epoch), on the CIFAR-10 ConvNet.

The peer is the unpruned search itself, in the same script, with the same sampler seed (TPE's first ten
trials are random, so both arms start from the same settings). Printed per seed and as mean +/- std: the
best validation accuracy each arm found, the epochs it trained (the compute, independent of machine load)
and its training seconds; the target is pruning's best accuracy within noise of the unpruned one in at most
half the compute.

    python bench/tune_pruning.py --data ../shared/datasets/cifar10-jpeg/train --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe
from nnrecipe.tune.study import new_plan, run_study

ROOT = Path(__file__).resolve().parents[1]
SPACE = [
    "optim.lr=loguniform(0.005, 0.3)",
    "optim.weight_decay=loguniform(1e-5, 5e-3)",
    "train.batch_size=choice(64, 128, 256)",
    "model.dropout=uniform(0.0, 0.5)",
    "data.augment.crop_padding=int(0, 4)",
]


def subset_tree(data: Path, per_class: int, out: Path) -> Path:
    """The first `per_class` images of each class, linked into a smaller ImageFolder tree (decoded per trial)."""
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        dest = out / folder.name
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted(folder.iterdir())[:per_class]:
            if not (dest / src.name).exists():
                (dest / src.name).symlink_to(src.resolve())
    return out


def base_recipe(data: Path, epochs: int, runs: Path) -> dict:
    overrides = [
        "data.source=imagefolder",
        f"data.path={data}",
        "data.val_fraction=0.2",
        "data.test_fraction=0",
        f"train.epochs={epochs}",
        f"track.runs_dir={runs}",
        "track.progress=false",
        "track.tensorboard=false",
        "track.plots=false",
    ]
    return yaml.safe_load(load_recipe(ROOT / "recipes" / "cifar10-convnet.yaml", overrides).to_yaml())


def search(raw: dict, pruner: str, seed: int, trials: int, folder: Path) -> dict:
    plan = new_plan(raw, None, SPACE, trials, sampler="tpe", pruner=pruner, metric=None, direction=None,
                    seed=seed, name=folder.name)  # fmt: skip
    start = time.perf_counter()
    report = run_study(plan, folder)
    done = [t for t in report["trials"] if t["state"] in ("complete", "pruned")]
    return {
        "best": report["best"]["value"],
        "best_params": report["best"]["params"],
        "epochs": sum(t["epochs"] for t in done),
        "seconds": sum(t["seconds"] or 0 for t in done),
        "wall": time.perf_counter() - start,
        "pruned": sum(t["state"] == "pruned" for t in done),
    }


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4g} +/- {statistics.stdev(xs) if len(xs) > 1 else 0:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a CIFAR-10 ImageFolder tree")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=1000, help="images per class (80%% trained, 20%% validation)")
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-tune-pruning"))
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tree = subset_tree(args.data, args.per_class, args.runs / f"cifar10-{args.per_class}-per-class")
    raw = base_recipe(tree.resolve(), args.epochs, args.runs)
    print(f"{cpu_model()}; {args.trials} trials of up to {args.epochs} epochs on {10 * args.per_class:,} CIFAR-10 images, "
          f"space: {'; '.join(SPACE)}")  # fmt: skip
    rows = {"none": [], "asha": []}
    for seed in args.seeds:
        for pruner in ("none", "asha") if seed % 2 == 0 else ("asha", "none"):  # alternate which goes first
            r = search(raw, pruner, seed, args.trials, args.runs / f"{stamp}-{pruner}-s{seed}")
            rows[pruner].append(r)
            print(f"seed {seed} pruner {pruner:4s}: best val accuracy {r['best']:.4f}, {r['epochs']} epochs "
                  f"({r['pruned']} trials pruned), {r['seconds']:.0f} s of training; best {r['best_params']}",
                  flush=True)  # fmt: skip
    plain, asha = rows["none"], rows["asha"]
    epochs = [a["epochs"] / p["epochs"] for a, p in zip(asha, plain, strict=True)]
    seconds = [a["seconds"] / p["seconds"] for a, p in zip(asha, plain, strict=True)]
    print(
        f"best val accuracy: no pruning {mean_std([r['best'] for r in plain])}, ASHA {mean_std([r['best'] for r in asha])}"
    )
    print(f"ASHA / no pruning compute: epochs {mean_std(epochs)}, training seconds {mean_std(seconds)}")
    out = args.runs / f"{stamp}-summary.json"
    out.write_text(json.dumps({"cpu": cpu_model(), "args": vars(args) | {"data": str(args.data), "runs": str(args.runs)},
                               "rows": rows}, indent=2))  # fmt: skip
    print(f"written {out}")


if __name__ == "__main__":
    main()
