"""Trust figures for the CIFAR-10 ConvNet (`recipes/cifar10-convnet.yaml`), trained without and with
`train.adversarial` (FGSM at 8/255 beside the clean batch), side by side, on the real CIFAR-10 images:

- clean accuracy against FGSM and PGD (20 steps) at 2/255 and 8/255 (`nnrecipe evaluate --attack`) on
  1,000 held-out test images;
- expected calibration error on test before and after temperature scaling (`nnrecipe calibrate`);
- the explanation checks (`nnrecipe explain --check`) on validation images: the deletion-curve area for
  integrated gradients, Grad-CAM and saliency against random pixels (smaller = the map finds what the model
  uses) and the model-randomisation rank correlation.

    python bench/trust_cifar.py --data ../shared/datasets/cifar10-jpeg/train [--epochs 15] [--seed 0]
    python bench/trust_cifar.py --evaluate runs/<plain run> runs/<adversarial run>   # the figures again, no training
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.deploy.calibrate import calibrate_run
from nnrecipe.recipe import load_recipe
from nnrecipe.runs import open_run, train_new_run
from nnrecipe.tasks import get_family
from nnrecipe.trust.explain import explain_run
from nnrecipe.trust.robustness import evaluate_robustness

ROOT = Path(__file__).resolve().parents[1]
ADVERSARIAL = ["train.adversarial.method=fgsm", "train.adversarial.epsilon=8/255"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--evaluate", type=Path, nargs=2, metavar=("PLAIN", "ADVERSARIAL"), help="Trained runs to measure.")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-examples", type=int, default=200)
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-trust-cifar"))
    args = ap.parse_args()
    print(cpu_model(), flush=True)
    family = get_family("image_classification")
    results = {}
    for name, extra in (("plain", []), ("adversarial", ADVERSARIAL)):
        overrides = [f"data.path={args.data.resolve() if args.data else ''}", "data.source=imagefolder", "data.test_fraction=0.1",
                     f"train.epochs={args.epochs}", f"train.seed={args.seed}", f"track.runs_dir={args.runs}",
                     "track.progress=false", *extra]  # fmt: skip
        if args.evaluate:
            run = open_run(args.evaluate[0 if name == "plain" else 1])
        else:
            recipe = load_recipe(ROOT / "recipes" / "cifar10-convnet.yaml", overrides)
            run, _ = train_new_run(family, recipe, f"cifar-{name}")
        if run.meta().get("temperature"):  # measured again: calibrate from the trained temperature
            run.update_meta(temperature=None)
        robust = evaluate_robustness(run, None, ["fgsm", "pgd"], [2 / 255, 8 / 255], 20, False, 1000)
        calibrated = calibrate_run(run)
        checks = explain_run(run, [], ["ig", "gradcam", "saliency"], check=True, check_examples=args.check_examples)
        results[name] = {
            "run": str(run.dir),
            "clean": robust["clean_accuracy"],
            "attacks": robust["attacks"],
            "ece_before": calibrated["ece_before"],
            "ece_after": calibrated["ece_after"],
            "temperature": calibrated["temperature"],
            "deletion": {
                m: tuple(c["deletion"][f"area_{k}"] for k in ("attributed", "least", "random"))
                for m, c in checks["checks"].items()
            },
            "randomisation": {m: c["randomisation"]["rank_correlation"] for m, c in checks["checks"].items()},
        }
        print(json.dumps(results[name], indent=1), flush=True)
    print(f"\n{cpu_model()}; seed {args.seed}, {args.epochs} epochs, 1,000 test images")
    print("| training | clean | FGSM 2/255 | PGD 2/255 | FGSM 8/255 | PGD 8/255 | test ECE before -> after |")
    for name, r in results.items():
        acc = {(a["method"], round(a["epsilon"] * 255)): a["accuracy"] for a in r["attacks"]}
        cells = " | ".join(f"{acc[(m, e)]:.3f}" for e in (2, 8) for m in ("fgsm", "pgd"))
        print(f"| {name} | {r['clean']:.3f} | {cells} | {r['ece_before']:.4f} -> {r['ece_after']:.4f} |")
    print(
        "| training | method | deletion AUC: most attributed first | least attributed first | random | randomisation rho |"
    )
    for name, r in results.items():
        for m, (att, least, rnd) in r["deletion"].items():
            print(f"| {name} | {m} | {att:.4f} | {least:.4f} | {rnd:.4f} | {r['randomisation'][m]:.3f} |")
    Path(results["plain"]["run"]).parent.joinpath("trust_cifar.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
