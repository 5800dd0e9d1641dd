"""`train.strategy: fsdp` against DDP (issue 17): the same GPT trained by two processes under torchrun, once
with DDP (every process holds the whole model, its gradients and AdamW's two moments) and once with FSDP2
(each process holds half of them, a block gathered while it computes). Printed per strategy and process:
the weights, gradients and AdamW state it holds (exact, from its tensors), its peak resident memory (VmHWM)
at the last training step and at the end (after the checkpoint, whose whole copy is gathered on rank 0),
and the training samples/s; then FSDP / DDP, and the final losses, which must agree.

    python bench/fsdp_memory.py --text ../shared/datasets/tinyshakespeare/train.txt
    python bench/fsdp_memory.py --text ... --layers 8 --width 512 --steps 20 --batch 8

The defaults (GPT-2 small's 12 x 768, a batch of 2 blocks) make the weights, gradients and AdamW moments
the bulk of the memory, the part FSDP divides; with large batches the activations, which it does not
divide, dominate instead. Validation is the text's last 2%, so that rank 0's closing report stays short.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)


def peak_mb() -> float:
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def held_mb(trainer) -> float:
    """The weights, gradients and optimiser state this process holds (its shards under FSDP), in MB."""
    import torch

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    params = list(trainer.model.parameters())
    tensors = [local(p) for p in params] + [local(p.grad) for p in params if p.grad is not None]
    tensors += [local(v) for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def worker(args) -> None:
    """One process of a torchrun launch: train, then rank 0 prints every process's figures."""
    import torch.distributed as dist

    from nnrecipe.engine.loop import Callback
    from nnrecipe.recipe import validate_recipe
    from nnrecipe.runs import create_run
    from nnrecipe.tasks import get_family

    class Measure(Callback):
        """At the last step, before the checkpoint: the peak memory of training and the state held."""

        def before_zero_grad(self, trainer):  # the last step's gradients still there
            if trainer.state.global_step == args.steps - 1:
                self.training, self.held = peak_mb(), held_mb(trainer)

    recipe = validate_recipe({
        "task": "language_modeling",
        "data": {"train": args.text, "val_fraction": 0.02, "block_size": 128, "batches_per_epoch": args.steps,
                 "eval_batches": 2},
        "model": {"name": "gpt", "n_layer": args.layers, "n_head": args.width // 64, "n_embd": args.width},
        "optim": {"lr": 3e-4},
        "train": {"epochs": 1, "batch_size": args.batch, "eval_batch_size": args.batch, "seed": 0, "precision": "fp32",
                  "strategy": args.worker},
        "sample": {"prompts": []},
        "track": {"runs_dir": args.runs, "name": args.worker, "progress": False, "tensorboard": False,
                  "plots": False},
    })  # fmt: skip
    measure = Measure()
    run = create_run(recipe, args.worker)
    get_family("language_modeling").train(recipe, run, callbacks=[measure])
    mine = {"training": measure.training, "overall": peak_mb(), "held": measure.held}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        row = json.loads((run.dir / "metrics.jsonl").read_text().splitlines()[-1])
        result = {"ranks": everyone, "samples_per_s": row["samples_per_s"], "loss": row["train_loss"]}
        print("RESULT " + json.dumps(result))


def launch(strategy: str, args, runs: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__]
    cmd += ["--worker", strategy, "--runs", runs, "--text", args.text, "--layers", str(args.layers)]
    cmd += ["--width", str(args.width), "--steps", str(args.steps), "--batch", str(args.batch)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{strategy} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="a text file (tiny Shakespeare)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=2, help="blocks of 128 per process and step")
    p.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    p.add_argument("--runs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    params = 12 * args.layers * args.width**2 / 1e6
    print(f"GPT {args.layers} layers x {args.width} (~{params:.1f}M parameters), block 128, batch {args.batch} "
          f"per process, {args.steps} steps, 2 processes (gloo, 1 thread each); {cpu_model()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as runs:
        results = {s: launch(s, args, runs) for s in ("ddp", "fsdp")}
    for s, r in results.items():
        held, training, overall = (
            " / ".join(f"{m[k]:,.0f}" for m in r["ranks"]) for k in ("held", "training", "overall")
        )
        print(f"{s:5s} weights+grads+AdamW held {held} MB; peak RSS while training {training} MB, overall {overall} MB "
              f"(rank 0 / 1); {r['samples_per_s']:.1f} samples/s; train loss {r['loss']:.4f}")  # fmt: skip
    ddp, fsdp = results["ddp"], results["fsdp"]

    def ratio(key: str) -> float:
        return max(m[key] for m in fsdp["ranks"]) / max(m[key] for m in ddp["ranks"])

    print(f"FSDP / DDP: model state held {ratio('held'):.2f}x, peak RSS while training {ratio('training'):.2f}x, "
          f"overall {ratio('overall'):.2f}x, samples/s {fsdp['samples_per_s'] / ddp['samples_per_s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
