"""Which process of a multi-process run this is (torchrun / accelerate launch set RANK and WORLD_SIZE), and
the torchrun command (and environment) that starts one."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes run files."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def end_process_group() -> None:
    """Destroy the default process group, once a launched process's work is done (torch's documented
    shutdown, near the end of main). Left to the interpreter's exit, gloo's worker threads outlived it: one
    rank of a finished DDP trial aborted ("terminate called without an active exception", SIGABRT) and
    torchrun failed the trial. Nothing to do in a single process, nor any import (a command that never
    imported torch stays quick)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(
    args: list[str],
    nnodes: int,
    nproc: int,
    node_rank: int,
    master: str | None,
    module: str = "nnrecipe.cli",
    log_dir: Path | None = None,
    local_addr: str | None = None,
    join_timeout: int = 600,
) -> list[str]:
    """`python -m torch.distributed.run ... -m <module> <args>`: one node (`--standalone`), or one of
    `nnodes` nodes meeting at node 0's c10d rendezvous `master` (ADDR:PORT). Node 0 hosts the rendezvous
    store; saying so explicitly lets two "nodes" share one machine (the test does). `log_dir`: each process's
    output is also kept there (torchrun --tee), so a failure can be read after the fact. `local_addr`: this
    node's address on the route to the master (local_route); without it torchrun names the node by its
    hostname. `join_timeout`: seconds the nodes wait for one another at the rendezvous."""
    import sys

    from nnrecipe.errors import UserError

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc)]
    if log_dir is not None:
        cmd += ["--log-dir", str(log_dir), "--tee", "3"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        if not master or ":" not in master:
            raise UserError("--master: give node 0's ADDR:PORT (the same on every node) with --nnodes > 1")
        port = master.rsplit(":", 1)[1]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--master: the port must be a number from 1 to 65535 (got {master!r})")
        if not 0 <= node_rank < nnodes:
            raise UserError(f"--node-rank: must be 0..{nnodes - 1} (got {node_rank})")
        cmd += ["--node-rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", master]
        cmd += ["--rdzv-id", "nnrecipe", "--rdzv-conf", f"is_host={int(node_rank == 0)},join_timeout={join_timeout}"]
        if local_addr is not None:
            cmd += ["--local-addr", local_addr]
    return [*cmd, "-m", module, *args]


def local_route(master: str) -> tuple[str, str] | None:
    """This machine's address on the route to the rendezvous host of `master` (ADDR:PORT), and the name of
    its network interface; None when the route is loopback (every node on one machine) or cannot be told.

    Why: left alone, torchrun advertises a node by its hostname and gloo binds to the address the hostname
    resolves to. Where /etc/hosts maps the hostname to 127.0.x.1 (many cloud images and containers), the
    other node is told to meet this one at its own loopback, and a two-machine run waits forever (seen with
    two network namespaces on one host, tests/test_distributed.py)."""
    import socket

    import psutil  # accelerate's dependency

    host = master.rsplit(":", 1)[0].strip("[]")
    try:
        family, *_, address = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address[0], 9))  # a UDP connect sends nothing; it only picks the route
            local = probe.getsockname()[0]
    except OSError:
        return None
    if local.startswith("127.") or local == "::1":
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == local for a in addresses):
            return local, name
    return None


def multi_node_environment(route: tuple[str, str] | None, environ: dict[str, str]) -> dict[str, str]:
    """`environ` with gloo and NCCL bound to the interface of `route` (local_route), unless the user chose
    one (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME)."""
    if route is None:
        return dict(environ)
    return {"GLOO_SOCKET_IFNAME": route[1], "NCCL_SOCKET_IFNAME": route[1]} | dict(environ)
