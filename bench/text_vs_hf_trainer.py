"""SST-2 with the packaged MiniLM: nnrecipe vs the Hugging Face Trainer, side by side in one script.

Same model, the same 4,006 training sentences and 439 held-out ones (the recipe's grouped split), batch 32, max_length 64, AdamW 5e-5
with weight decay 0.01, linear warmup (0.1 epoch) and decay, clipping 1.0, 3 epochs, dynamic padding.
nnrecipe runs its defaults (precision auto: bf16 autocast on CUDA or on CPUs with AMX or AVX512-BF16, fp32
elsewhere; fused AdamW). The Trainer runs with length grouping, once in its default fp32 and once with `bf16=True`
(equal precision; skipped on a CPU without bf16 units, which emulates it ~25x slower), and with
`--with-default-sampler` also with its default random sampler.
Prints training samples/s (model loading and evaluation excluded) and held-out accuracy for each, and
the ratios last. Each run is its own process, so none inherits another's allocator state or settings.

    python bench/text_vs_hf_trainer.py --train ../shared/datasets/sst2/train.tsv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.data.text import label_names
from nnrecipe.engine.numerics import cpu_bf16_units
from nnrecipe.models.hf import build
from nnrecipe.recipe import load_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

text = get_family("text_classification")

ROOT = Path(__file__).resolve().parents[1]


def ours(recipe) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        recipe.track.runs_dir = Path(tmp)
        result = text.train(recipe, create_run(recipe, "bench"))
    seconds = sum(r["epoch_seconds"] for r in result["history"])
    examples = sum(r["samples_per_s"] * r["epoch_seconds"] for r in result["history"])
    return {"samples_per_s": examples / seconds, "accuracy": result["accuracy"], "seconds": seconds}


def hf(recipe, group: bool, bf16: bool = False) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    splits = text.splits(recipe)
    train_set, val_set = splits.train, splits.val
    labels = label_names(train_set.labels)
    ids = {l: i for i, l in enumerate(labels)}
    torch.manual_seed(recipe.train.seed)
    model, tokenizer = build(recipe.model.name, labels, "full")

    def encode(part):
        enc = tokenizer(part.texts, truncation=True, max_length=recipe.data.max_length)
        return [
            {"input_ids": a, "attention_mask": m, "labels": ids[l]}
            for a, m, l in zip(enc["input_ids"], enc["attention_mask"], part.labels)
        ]

    train_rows, val_rows = encode(train_set), encode(val_set)
    steps_per_epoch = -(-len(train_rows) // recipe.train.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"train_sampling_strategy": "group_by_length"} if group else {}
        extra |= {"bf16": True} if bf16 else {}
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=recipe.train.batch_size,
            per_device_eval_batch_size=128,
            learning_rate=recipe.optim.lr,
            weight_decay=recipe.optim.weight_decay,
            num_train_epochs=recipe.train.epochs,
            lr_scheduler_type="linear",
            warmup_steps=round(0.1 * steps_per_epoch),
            max_grad_norm=1.0,
            seed=recipe.train.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=10_000,
            report_to=[],
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            **extra,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=train_rows, data_collator=DataCollatorWithPadding(tokenizer)
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        out = trainer.predict(val_rows)
    # Compare with the label_ids the Trainer returns: its eval loader need not keep the dataset's order.
    accuracy = float((np.asarray(out.predictions).argmax(1) == np.asarray(out.label_ids)).mean())
    return {"samples_per_s": len(train_rows) * recipe.train.epochs / seconds, "accuracy": accuracy, "seconds": seconds}


RUNS = {
    "nnrecipe": lambda recipe: ours(recipe.model_copy(deep=True)),
    "HF Trainer, length grouping": lambda recipe: hf(recipe, True),
    "HF Trainer, grouping + bf16": lambda recipe: hf(recipe, True, bf16=True),
    "HF Trainer, default sampler": lambda recipe: hf(recipe, False),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="SST-2 train.tsv")
    ap.add_argument(
        "--with-default-sampler", action="store_true", help="also time the Trainer without length grouping (slow)"
    )
    ap.add_argument(
        "--with-emulated-bf16",
        action="store_true",
        help="time the Trainer's bf16 setting on a CPU without bf16 units too",
    )
    ap.add_argument("--only", choices=sorted(RUNS), help=argparse.SUPPRESS)  # one run, in this process
    args = ap.parse_args()
    recipe = load_recipe(
        ROOT / "recipes/sst2-minilm.yaml",
        [f"data.train={args.train}", "track.progress=false", "track.plots=false", "track.tensorboard=false"],
    )
    if args.only:
        print("RESULT " + json.dumps(RUNS[args.only](recipe)), flush=True)
        return
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    names = [n for n in RUNS if args.with_default_sampler or n != "HF Trainer, default sampler"]
    if not torch.cuda.is_available() and not cpu_bf16_units() and not args.with_emulated_bf16:
        names.remove("HF Trainer, grouping + bf16")
        print(
            "HF Trainer, grouping + bf16: skipped, this CPU has no bf16 units (AMX or AVX512-BF16) and emulates it: "
            "a MiniLM step took 10.8 s against 0.43 s in fp32 on an AVX2 AMD EPYC (bench/RESULTS.md), about an hour "
            "for this run; --with-emulated-bf16 runs it anyway",
            flush=True,
        )
    rows = {}
    for name in names:
        # Each run in a fresh process: nothing one leaves behind (the allocator's state, oneDNN's caches,
        # process-wide settings such as nnrecipe's malloc thresholds) reaches the next.
        out = subprocess.run(
            [sys.executable, __file__, "--train", args.train, "--only", name], capture_output=True, text=True
        )
        result = next((line for line in out.stdout.splitlines() if line.startswith("RESULT ")), None)
        if result is None:
            raise SystemExit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        rows[name] = r = json.loads(result.removeprefix("RESULT "))
        print(
            f"{name:30s} {r['samples_per_s']:6.1f} samples/s   {r['seconds']:6.1f} s   held-out accuracy {r['accuracy']:.4f}",
            flush=True,
        )
    base = rows["nnrecipe"]["samples_per_s"]
    for name, r in rows.items():
        if name != "nnrecipe":
            print(f"ratio nnrecipe / {name}: {base / r['samples_per_s']:.2f}x")
    best = max((n for n in rows if n != "nnrecipe"), key=lambda n: rows[n]["samples_per_s"])
    print(f"ratio nnrecipe / the Trainer's best setting here ({best}): {base / rows[best]['samples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
