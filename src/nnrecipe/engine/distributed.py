"""Which process of a multi-process run this is (torchrun / accelerate launch set RANK and WORLD_SIZE)."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes run files."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def torchrun_command(
    args: list[str], nnodes: int, nproc: int, node_rank: int, master: str | None, module: str = "nnrecipe.cli"
) -> list[str]:
    """`python -m torch.distributed.run ... -m <module> <args>`: one node (`--standalone`), or one of
    `nnodes` nodes meeting at node 0's c10d rendezvous `master` (ADDR:PORT). Node 0 hosts the rendezvous
    store; saying so explicitly lets two "nodes" share one machine (the test does)."""
    import sys

    from nnrecipe.errors import UserError

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc)]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        if not master or ":" not in master:
            raise UserError("--master: give node 0's ADDR:PORT (the same on every node) with --nnodes > 1")
        if not 0 <= node_rank < nnodes:
            raise UserError(f"--node-rank: must be 0..{nnodes - 1} (got {node_rank})")
        cmd += ["--node-rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", master]
        cmd += ["--rdzv-id", "nnrecipe", "--rdzv-conf", f"is_host={int(node_rank == 0)}"]
    return [*cmd, "-m", module, *args]
