"""Class-incremental Split CIFAR-10 (5 stages of 2 classes) with nnrecipe and with Avalanche side by side:
naive fine-tuning, experience replay at the same memory, and joint training (the upper bound).

Both learn the same network (nnrecipe's `convnet`, built by nnrecipe and handed to Avalanche) from the same
start, on the same images (nnrecipe's stratified train/test split of the tree, handed to Avalanche as
tensors), with the same optimiser (SGD, momentum 0.9, constant rate), batch, epochs per stage and
normalisation, no augmentation. Replay: a memory of M images, an equal share per class seen (Avalanche:
per stage, the same here), chosen at random, and B memory images drawn into every batch of B new ones
(Avalanche's Replay default; nnrecipe's `continual.replay_batch: B`). Differences that stay: nnrecipe grows the head by two rows a stage
(Avalanche's network has all 10 outputs from the start, its usual set-up), and nnrecipe validates each
epoch and writes checkpoints and reports (counted in its time; neither tool draws plots: track.plots false).
nnrecipe's recipe sets `model.channels_last: true` (a recipe field: 1.3x the training and 2x the inference
images/s of this ConvNet on an AMD EPYC's 2 cores); Avalanche trains the network in the default contiguous
format, as its users do. nnrecipe's `train.precision: auto` times bf16 against fp32 on a CPU with bf16 units
and keeps the faster (bf16 for this ConvNet on an AMD EPYC: 1.6x a step); Avalanche trains in fp32, its
default. `--contiguous --fp32` runs nnrecipe without either, for the like-for-like figure.

Average accuracy: after the last stage, the mean over the 5 stages of the accuracy on that stage's test
images (over the whole head). Timed: everything from the first stage's training to the last evaluation,
data decoding excepted for both (nnrecipe's first read of the tree is done before the clock starts).

    pip install --no-deps -r bench/requirements-avalanche.txt   # avalanche-lib 0.6.0 and what it imports
    python bench/continual_vs_avalanche.py --data ../shared/datasets/cifar10-jpeg/train --epochs 3 --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.continual import train_stages
from nnrecipe.recipe import load_recipe
from nnrecipe.runs import train_new_run
from nnrecipe.tasks import get_family
from nnrecipe.tasks.image_inputs import image_spec, splits_of

STAGES = 5


def nnrecipe_recipe(args, seed: int, name: str, *extra: str):
    base = {
        "task": "image_classification",
        "data": {"source": "imagefolder", "path": str(args.data.resolve()), "val_fraction": 0.05, "test_fraction": 0.1},
        "model": {"name": "convnet", "channels_last": not args.contiguous},
        "optim": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": args.epochs, "batch_size": args.batch, "seed": seed, "precision": args.precision},
        "track": {"runs_dir": str(args.runs), "name": name, "progress": False, "tensorboard": False, "plots": False},
    }
    path = args.runs / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(base))
    return load_recipe(path, list(extra))


def stage_classes(classes: list[str]) -> list[list[str]]:
    per = len(classes) // STAGES
    return [classes[i * per : (i + 1) * per] for i in range(STAGES)]


def run_nnrecipe(args, seed: int, strategy: str, stamp: str) -> dict:
    family = get_family("image_classification")
    name = f"nn-{strategy}-s{seed}-{stamp}"
    whole = nnrecipe_recipe(args, seed, name)
    stages = stage_classes(family.splits(whole).classes)
    if strategy == "joint":
        start = time.perf_counter()
        run, _ = train_new_run(family, whole, name, "joint")
        final = []
        for classes in stages:
            part = whole.model_copy(deep=True)
            part.data.classes = classes
            final.append(family.continual_score(run, part, family.continual_holdout(part)))
        return {"average_accuracy": sum(final) / len(final), "final": final, "seconds": time.perf_counter() - start}
    extra = [f"continual.strategy={'finetune' if strategy == 'naive' else 'replay'}"]
    if strategy == "replay":
        extra += [
            f"continual.memory={args.memory}",
            "continual.selection=random",
            f"continual.replay_batch={args.batch}",
        ]
    recipe = nnrecipe_recipe(args, seed, name, *extra, f"continual.stages={json.dumps(stages)}")
    start = time.perf_counter()
    result = train_stages(family, recipe, family.continual_stages(recipe), name)
    seconds = time.perf_counter() - start
    return {**{k: result[k] for k in ("average_accuracy", "average_forgetting")}, "final": result["accuracy_matrix"][-1],
            "seconds": seconds}  # fmt: skip


def avalanche_data(args, seed: int):
    """nnrecipe's own split of the tree, normalised as nnrecipe normalises it, as tensor datasets."""
    recipe = nnrecipe_recipe(args, seed, "avalanche-data")
    splits = splits_of(recipe)
    spec = image_spec(recipe, splits)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (spec.mean, spec.std))

    class Tensors(torch.utils.data.TensorDataset):
        def __init__(self, part):
            super().__init__((part.images.float() / 255 - mean) / std, part.labels)
            self.targets = part.labels.tolist()

    return Tensors(splits.train), Tensors(splits.test), spec


def run_avalanche(args, seed: int, strategy: str, data) -> dict:
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import JointTraining, Naive, Replay
    from avalanche.training.plugins import EvaluationPlugin

    train, test, spec = data
    torch.manual_seed(seed)
    model = spec.build_model()
    bench = class_incremental_benchmark(
        {"train": train, "test": test}, class_order=list(range(10)), num_experiences=STAGES
    )
    kwargs = dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=args.batch,
        train_epochs=args.epochs,
        eval_mb_size=512,
        device="cpu",
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]),
    )
    key = "Top1_Acc_Exp/eval_phase/test_stream/Exp{:03d}"
    start = time.perf_counter()
    if strategy == "joint":
        learner = JointTraining(**kwargs)
        learner.train(bench.train_stream)
        rows = [learner.eval(bench.test_stream)]
    else:
        learner = Naive(**kwargs) if strategy == "naive" else Replay(mem_size=args.memory, **kwargs)
        rows = []
        for exp in bench.train_stream:
            learner.train(exp)
            rows.append(learner.eval(bench.test_stream))
    seconds = time.perf_counter() - start
    matrix = [[float(r[key.format(j)]) for j in range(STAGES)] for r in rows]
    final = matrix[-1]
    out = {"average_accuracy": sum(final) / STAGES, "final": final, "seconds": seconds}
    if strategy != "joint":
        out["average_forgetting"] = sum(
            max(matrix[i][j] for i in range(j, STAGES - 1)) - final[j] for j in range(STAGES - 1)
        ) / (STAGES - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a CIFAR-10 ImageFolder tree")
    ap.add_argument("--epochs", type=int, default=3, help="per stage (joint: in all)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--memory", type=int, default=1000)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--strategies", default="naive,replay,joint")
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-continual"))
    ap.add_argument("--contiguous", action="store_true", help="nnrecipe without model.channels_last")
    ap.add_argument("--fp32", dest="precision", action="store_const", const="fp32", default="auto",
                    help="nnrecipe in fp32 (default: train.precision auto)")  # fmt: skip
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, dict[str, list[dict]]] = {}
    for seed in seeds:
        data = avalanche_data(args, seed)  # also decodes the tree once, before any clock starts
        for strategy in args.strategies.split(","):
            for tool in ("nnrecipe", "avalanche"):
                if tool == "nnrecipe":
                    r = run_nnrecipe(args, seed, strategy, stamp)
                else:
                    r = run_avalanche(args, seed, strategy, data)
                results.setdefault(strategy, {}).setdefault(tool, []).append(r)
                print(f"seed {seed} {strategy:6s} {tool:9s} average accuracy {r['average_accuracy']:.4f} "
                      f"in {r['seconds']:.0f} s; final row {[round(v, 3) for v in r['final']]}", flush=True)  # fmt: skip

    def stat(rows, key):
        values = [r[key] for r in rows]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    lines = [f"Split CIFAR-10, 5 x 2 classes, {args.epochs} epochs a stage, batch {args.batch}, SGD {args.lr}, "
             f"memory {args.memory}, seeds {seeds}, nnrecipe channels_last {not args.contiguous}, precision {args.precision}; CPU: {cpu_model()}"]  # fmt: skip
    for strategy, tools in results.items():
        (na, ns), (aa, as_) = stat(tools["nnrecipe"], "average_accuracy"), stat(tools["avalanche"], "average_accuracy")
        (nt, _), (at, _) = stat(tools["nnrecipe"], "seconds"), stat(tools["avalanche"], "seconds")
        lines.append(f"{strategy:6s} average accuracy nnrecipe {na:.4f} +/- {ns:.4f}, Avalanche {aa:.4f} +/- {as_:.4f} "
                     f"({na - aa:+.4f}); time {nt:.0f} s vs {at:.0f} s: {at / nt:.2f}x")  # fmt: skip
    print("\n".join(lines))
    out = args.runs / f"continual-vs-avalanche-{stamp}.json"
    out.write_text(json.dumps({"lines": lines, "results": results}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
