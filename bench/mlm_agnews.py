"""Domain-adaptive pretraining measured: MiniLM pretrained further with masked-LM on the AG News texts
(recipes/agnews-minilm-mlm.yaml, labels never read), then fine-tuned on 1,000 labelled rows, against the same
fine-tuning from the packaged MiniLM; accuracy on the other 9,001 rows of the sample, over seeds.

The MLM text is every row's text, the evaluation rows' included (unlabelled text of the target domain is
what domain-adaptive pretraining is for; their labels are never seen before the evaluation).

    python bench/mlm_agnews.py --data ../shared/datasets/agnews/train_sample.tsv [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.recipe import load_recipe, validate_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

ROOT = Path(__file__).resolve().parents[1]


def fine_tune(model: str, train: Path, test: Path, seed: int, runs: Path) -> float:
    recipe = validate_recipe(
        {
            "task": "text_classification",
            "data": {"train": str(train), "test": str(test), "text_column": "text", "label_column": "label",
                     "max_length": 128, "val_fraction": 0.1},
            "model": {"name": model},
            "train": {"epochs": 5, "seed": seed},
            "track": {"runs_dir": str(runs), "progress": False, "tensorboard": False, "plots": False},
        }
    )  # fmt: skip
    return get_family("text_classification").train(recipe, create_run(recipe, f"cls-{seed}"))["accuracy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="agnews train_sample.tsv (text<TAB>label, no header)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--labelled", type=int, default=1000)
    args = ap.parse_args()
    rows = [line.split("\t") for line in Path(args.data).read_text(encoding="utf-8").splitlines() if "\t" in line]
    random.Random(0).shuffle(rows)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clean = [(t.replace("\t", " "), label.strip()) for t, label in rows]
        (tmp / "texts.txt").write_text("\n".join(t for t, _ in clean) + "\n", encoding="utf-8")
        for name, part in (("train", clean[: args.labelled]), ("test", clean[args.labelled :])):
            lines = ["text\tlabel", *(f"{t}\t{label}" for t, label in part)]
            (tmp / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"machine: {cpu_model()}; {len(clean) - args.labelled} evaluation rows, {args.labelled} labelled")

        recipe = load_recipe(
            ROOT / "recipes/agnews-minilm-mlm.yaml",
            [f"data.train={tmp / 'texts.txt'}", f"track.runs_dir={tmp / 'runs'}", "track.progress=false",
             "track.tensorboard=false"],
        )  # fmt: skip
        start = time.perf_counter()
        run = create_run(recipe, "mlm")
        mlm = get_family("language_modeling").train(recipe, run)
        minutes = (time.perf_counter() - start) / 60
        print(f"MLM: val masked-LM loss {mlm['history'][0]['val_loss']:.3f} -> {mlm['loss']:.3f} in {minutes:.1f} min")

        results = {}
        for label, model in (("MiniLM", "minilm"), ("MiniLM + AG News MLM", str(run.dir / "model"))):
            accs = [fine_tune(model, tmp / "train.tsv", tmp / "test.tsv", s, tmp / "runs") for s in args.seeds]
            results[label] = accs
        print("\n| starting point | accuracy on the other rows (mean +/- std over seeds) | per seed |")
        print("|---|---|---|")
        for label, accs in results.items():
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {label} | {statistics.mean(accs):.4f} +/- {spread:.4f} | {', '.join(f'{a:.4f}' for a in accs)} |")


if __name__ == "__main__":
    main()
