"""A char-level GPT (nanoGPT's CPU configuration: 4 layers, 4 heads, 128 wide, block 64, batch 12) trained by
nnrecipe and by a plain hand-written PyTorch loop, side by side in one process, on the same batches.

Both read the same token stream through the same seeded block sampler, build the same model from the same
seed, and use AdamW (fused, no decay on biases/norms/embeddings) at a constant LR with norm clipping, so
their losses after the same steps should agree; the clock covers the training steps only. Printed: tokens/s
of each, their ratio, the mean training loss of each, and the achieved FLOP/s as a fraction of this
machine's measured fp32 matmul peak (nanoGPT's estimate_mfu: 6N + 12 L T C FLOPs per token).

Rounds alternate which side runs first. Besides each side's total time, the time between the ends of
successive steps is recorded, and its median gives a second tokens/s figure that a background process
stealing a core for a few seconds does not move (this 2-core host is shared).

    python bench/lm_vs_plain.py --train ../shared/datasets/tinyshakespeare/train.txt --steps 300 --rounds 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)
from nnrecipe.data.lm import BlockLoader, CharTokenizer, encode_stream, read_text
from nnrecipe.engine.config import Optim
from nnrecipe.engine.loop import Callback
from nnrecipe.engine.optim import build_optimizer
from nnrecipe.models.sequence import SequenceConfig, build_sequence_model, no_decay_parameters
from nnrecipe.recipe import validate_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family

BLOCK, BATCH, LR = 64, 12, 1e-3


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def flops_per_token(cfg: SequenceConfig, n_params: int) -> float:
    return 6 * n_params + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def plain(tokens, cfg: SequenceConfig, steps: int, seed: int) -> tuple[float, float, float]:
    torch.manual_seed(seed)
    model = build_sequence_model(cfg)
    opt = build_optimizer(
        model, Optim(name="adamw", lr=LR, weight_decay=0.1, betas=(0.9, 0.99)), no_decay=no_decay_parameters(model)
    )
    loader = BlockLoader(tokens, BLOCK, BATCH, batches=steps, shuffle=True, seed=seed)
    model.train()
    losses, start = [], time.perf_counter()
    ends = [start]
    for x, y in loader.batches(0):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        ends.append(time.perf_counter())
    return ends[-1] - start, median_step(ends), statistics.mean(losses)


def median_step(ends: list[float]) -> float:
    """The median time between the ends of successive steps (the first step, with its warm-up, left out)."""
    return statistics.median(b - a for a, b in zip(ends[1:-1], ends[2:], strict=True))


class Clock(Callback):
    """Training time from the first step's start to the last step's end."""

    def __init__(self):
        self.start, self.ends = None, []

    def on_train_mode(self, epoch, model):
        if self.start is None:
            self.start = time.perf_counter()
            self.ends.append(self.start)

    def after_step(self, trainer):
        self.ends.append(time.perf_counter())


def nnrecipe(text_file: Path, steps: int, seed: int, runs: Path) -> tuple[float, float, float]:
    recipe = validate_recipe(
        {
            "task": "language_modeling",
            "data": {"train": str(text_file), "block_size": BLOCK, "batches_per_epoch": steps, "eval_batches": 1},
            "model": {"name": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128},
            "optim": {"name": "adamw", "lr": LR, "weight_decay": 0.1, "betas": [0.9, 0.99]},
            "schedule": {"name": "constant", "warmup_epochs": 0},
            "train": {"epochs": 1, "batch_size": BATCH, "clip_grad_norm": 1.0, "seed": seed, "precision": "fp32"},
            "sample": {"max_new_tokens": 1},
            "track": {"runs_dir": str(runs), "progress": False, "tensorboard": False, "plots": False},
        }
    )
    clock = Clock()
    result = get_family("language_modeling").train(recipe, create_run(recipe, "bench"), callbacks=[clock])
    return clock.ends[-1] - clock.start, median_step(clock.ends), result["history"][-1]["train_loss"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True, help="a text file (tiny Shakespeare)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    text = read_text(Path(args.train))
    cut = int(len(text) * 0.9)  # the family trains on the first 90% (val_fraction 0.1): the same tokens
    tok = CharTokenizer.fit(text[:cut])
    tokens = encode_stream(tok, text[:cut])
    cfg = SequenceConfig("gpt", tok.vocab_size, BLOCK, n_layer=4, n_embd=128, n_head=4)
    n_params = sum(p.numel() for p in build_sequence_model(cfg).parameters())
    cpu = cpu_model()
    peak = matmul_peak()
    print(
        f"{cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    print(
        f"GPT {n_params / 1e6:.2f}M parameters, vocabulary {tok.vocab_size}, {args.steps} steps of {BATCH} x {BLOCK} tokens"
    )
    ratios, step_ratios = [], []
    with tempfile.TemporaryDirectory() as runs:
        for r in range(args.rounds):
            # Alternate which runs first (ABBA...): neither side always gets the warmer allocator and caches.
            if r % 2 == 0:
                p_s, p_step, p_loss = plain(tokens, cfg, args.steps, seed=r)
                n_s, n_step, n_loss = nnrecipe(Path(args.train), args.steps, r, Path(runs))
            else:
                n_s, n_step, n_loss = nnrecipe(Path(args.train), args.steps, r, Path(runs))
                p_s, p_step, p_loss = plain(tokens, cfg, args.steps, seed=r)
            tokens_done = args.steps * BATCH * BLOCK
            for name, s, step, loss in (("plain loop", p_s, p_step, p_loss), ("nnrecipe", n_s, n_step, n_loss)):
                achieved = flops_per_token(cfg, n_params) * tokens_done / s
                print(f"round {r}: {name:10s} {tokens_done / s:8,.0f} tokens/s ({BATCH * BLOCK / step:8,.0f} at the "
                      f"median step)  mean train loss {loss:.4f}  "
                      f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the matmul peak")  # fmt: skip
            ratios.append(p_s / n_s)
            step_ratios.append(p_step / n_step)
    for what, xs in (("total time", ratios), ("median step", step_ratios)):
        spread = statistics.stdev(xs) if len(xs) > 1 else 0.0
        print(f"nnrecipe / plain tokens/s by {what}: mean {statistics.mean(xs):.3f} +/- {spread:.3f}, median "
              f"{statistics.median(xs):.3f} (rounds: {', '.join(f'{x:.3f}' for x in xs)})")  # fmt: skip


if __name__ == "__main__":
    main()
