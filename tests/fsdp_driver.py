"""Run under torchrun by tests/test_distributed.py (not collected itself): a tiny GPT trained three ways in
one process group, `train.strategy` ddp, fsdp, and fsdp stopped mid-epoch then resumed.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/fsdp_driver.py TEXT RUNS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_resume import InterruptAt  # noqa: E402

from nnrecipe.recipe import validate_recipe  # noqa: E402
from nnrecipe.runs import create_run  # noqa: E402
from nnrecipe.tasks import get_family  # noqa: E402


def recipe(text: str, runs: str, name: str, strategy: str):
    return validate_recipe({
        "task": "language_modeling",
        "data": {"train": text, "block_size": 32, "batches_per_epoch": 12, "eval_batches": 4},
        "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 64},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 3, "batch_size": 8, "seed": 0, "precision": "fp32", "strategy": strategy},
        "sample": {"prompts": ["the "], "max_new_tokens": 20},
        # TensorBoard on: its per-epoch sample is a forward of the sharded model on every process
        "track": {"runs_dir": runs, "name": name, "progress": False, "tensorboard": strategy == "fsdp"},
    })  # fmt: skip


def slow_interrupt_writes() -> None:
    """Rank 0 takes two seconds to write the checkpoint it stops with, as a loaded machine may: the resume that
    follows in the same process group must not read the file before it is there (it once read the epoch's
    older checkpoint on rank 1, and the two processes waited for each other forever)."""
    import time

    from nnrecipe.engine import loop

    write = loop.save_checkpoint

    def slowly(path, tensors, state):
        if state["fit"]["status"] == "interrupted":
            time.sleep(2)
        write(path, tensors, state)

    loop.save_checkpoint = slowly


def main(text: str, runs: str) -> None:
    slow_interrupt_writes()
    family = get_family("language_modeling")
    for name, strategy in (("ddp", "ddp"), ("fsdp", "fsdp")):
        r = recipe(text, runs, name, strategy)
        family.train(r, create_run(r, name))
    r = recipe(text, runs, "fsdp-resumed", "fsdp")
    run = create_run(r, "fsdp-resumed")
    assert family.train(r, run, callbacks=[InterruptAt(1, 4)])["status"] == "interrupted"
    assert family.train(run.recipe(), run, resume=True)["status"] == "finished"


if __name__ == "__main__":
    main(*sys.argv[1:3])
