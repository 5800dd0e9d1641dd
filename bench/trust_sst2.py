"""Trust figures for the SST-2 MiniLM (`recipes/sst2-minilm.yaml`: its first 4,445 rows, validation held out
by containment groups), trained without and with `train.adversarial` (FGM in the token embeddings), side by
side:

- accuracy on a held-out test set: 1,000 rows from far down SST-2's training file (rows 60,000-61,000), less
  any that contain, or sit inside, a training or validation text (the file repeats sub-phrases);
- expected calibration error on that test set before and after temperature scaling (`nnrecipe calibrate`,
  fitted on validation);
- accuracy under a 5-step PGD attack in the embeddings at the FGM radius.

    python bench/trust_sst2.py --data ../shared/datasets/sst2/train.tsv [--epsilon 0.25] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.data.containment import contained_across
from nnrecipe.data.text import read_text_file
from nnrecipe.deploy.calibrate import calibrate_run
from nnrecipe.engine.adversarial import embedding_attack_accuracy
from nnrecipe.engine.config import Adversarial
from nnrecipe.recipe import load_recipe
from nnrecipe.runs import open_run, train_new_run
from nnrecipe.tasks import get_family

ROOT = Path(__file__).resolve().parents[1]


def held_out_test(data: Path, recipe, folder: Path) -> Path:
    """Rows 60,000-61,000 of the file, without those linked by containment to the recipe's train or val."""
    family = get_family("text_classification")
    splits = family.splits(recipe)
    rows = read_text_file(data, "tsv", "sentence", "label")
    far = rows.subset(range(60_000, min(61_000, len(rows))))
    linked = set(contained_across(far.texts, splits.train.texts + splits.val.texts))
    keep = [i for i in range(len(far)) if i not in linked]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sst2-test.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{far.texts[i]}\t{far.labels[i]}\n" for i in keep))
    print(f"test: {len(keep)} of {len(far)} far rows ({len(linked)} linked to train/val by containment dropped)")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--epsilon", type=float, default=0.25)
    ap.add_argument("--reuse-plain", type=Path, help="A plain run trained before: measured again, not retrained.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-trust-sst2"))
    args = ap.parse_args()
    print(cpu_model(), flush=True)
    family = get_family("text_classification")
    base = [f"data.train={args.data.resolve()}", f"train.seed={args.seed}", f"track.runs_dir={args.runs}",
            "track.progress=false"]  # fmt: skip
    test = held_out_test(args.data, load_recipe(ROOT / "recipes" / "sst2-minilm.yaml", base), args.runs)
    fgm = ["train.adversarial.method=fgm", f"train.adversarial.epsilon={args.epsilon}"]
    results = {}
    for name, extra in (("plain", []), ("fgm", fgm)):
        recipe = load_recipe(ROOT / "recipes" / "sst2-minilm.yaml", [*base, f"data.test={test}", *extra])
        if name == "plain" and args.reuse_plain:
            run = open_run(args.reuse_plain)
            run.update_meta(temperature=None)  # calibrated again below
            rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
            history = [r for r in rows if "val_accuracy" in r]
            result = json.loads((run.dir / "report.json").read_text())["test"] | {"history": history}
        else:
            run, result = train_new_run(family, recipe, f"sst2-{name}")
        inf = family.inference(run)  # attacked before calibration: the attack follows the model's own loss
        loader = family.loader(inf.tokenizer, family.splits(recipe).test, inf.labels, 64, inf.spec["max_length"], "cpu")
        attacked = embedding_attack_accuracy(
            inf.model, loader, Adversarial(method="pgd", epsilon=args.epsilon, steps=5)
        )
        calibrated = calibrate_run(run)
        results[name] = {
            "run": str(run.dir),
            "test_accuracy": result["accuracy"],
            "best_val_accuracy": max(row["val_accuracy"] for row in result["history"]),
            "ece_before": calibrated["ece_before"],
            "ece_after": calibrated["ece_after"],
            "temperature": calibrated["temperature"],
            "pgd_accuracy": attacked,
        }
        print(json.dumps(results[name], indent=1), flush=True)
    print(f"\n{cpu_model()}; seed {args.seed}; epsilon {args.epsilon} (L2 per example, token embeddings)")
    print("| training | val accuracy (grouped) | test accuracy | test ECE before -> after | embedding PGD accuracy |")
    for name, r in results.items():
        print(f"| {name} | {r['best_val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['ece_before']:.4f} -> "
              f"{r['ece_after']:.4f} | {r['pgd_accuracy']:.4f} |")  # fmt: skip
    (args.runs / "trust_sst2.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
