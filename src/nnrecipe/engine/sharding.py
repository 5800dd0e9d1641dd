"""`train.strategy: fsdp`: the model sharded across the processes with PyTorch's FSDP2 (`fully_shard`).

Each transformer block (every item of an nn.ModuleList that holds parameters: BERT's `encoder.layer`,
GPT-2's `h`, nnrecipe's GPT `blocks`) becomes one FSDP unit, gathered only while it computes; the rest
(embeddings, a tied head, final norms) is the root unit. Parameters, gradients and optimiser state are
each held once across the processes instead of once per process.

Accelerate's FSDP plugin would do the same calls, but Accelerate turns FSDP on only for multi-GPU (and
other accelerator) runs, not for multi-process CPU runs, so the engine calls `fully_shard` itself: one code
path on CPU (gloo) and CUDA (NCCL). Checkpoints stay whole: the model's and the optimiser's full state
dicts are gathered to rank 0 (a collective every process joins), the optimiser's numbered as
`Optimizer.state_dict()` numbers them, so a checkpoint reads the same whatever the strategy.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import nn

from nnrecipe.errors import UserError


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: the items of every nn.ModuleList that hold parameters, inner
    ones before outer ones (fully_shard goes bottom-up)."""
    units = [
        m
        for lst in model.modules()
        if isinstance(lst, nn.ModuleList)
        for m in lst
        if next(m.parameters(), None) is not None
    ]
    return units[::-1]


def shard(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, world_size: int) -> nn.Module:
    """Shard `model` (in place, moved to `device`) over `world_size` processes and point `optimizer`'s
    parameter groups at the sharded parameters (fully_shard replaces each parameter with a DTensor shard;
    the optimiser holds no state yet, so nothing else changes)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    recurrent = [type(m).__name__ for m in model.modules() if isinstance(m, nn.RNNBase)]
    if recurrent:  # their flat weight lists would keep pointing at the unsharded tensors
        raise UserError(f"train.strategy: fsdp shards transformer blocks; this model has a {recurrent[0]}, "
                        "which FSDP cannot shard; use train.strategy: ddp")  # fmt: skip
    # nnrecipe's GPT block also returns its keys and values (views, the KV cache of generation); nothing
    # changes them in place, which is what FSDP warns of on every forward
    warnings.filterwarnings("ignore", r"FSDP2-wrapped module \(FSDPBlock\) returned a view tensor")
    names = {id(p): n for n, p in model.named_parameters()}
    if device.type == "cpu":
        return_gathered_blocks_to_the_system()
    model.to(device)
    mesh = init_device_mesh(device.type, (world_size,))
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[id(p)]] for p in group["params"]]
    return model


def return_gathered_blocks_to_the_system() -> None:
    """On glibc, serve allocations of 1 MB and more by mmap, so that a block's gathered weights and gradients
    go back to the system when freed. glibc's default raises that threshold to the size of the first large
    block freed (up to 32 MB), after which every block's buffers come from the heap and stay resident:
    measured on a GPT of 85M parameters (bench/fsdp_memory.py), FSDP's peak RSS was then 1.09x DDP's instead
    of 0.66x. CUDA memory has its own allocator; elsewhere this does nothing."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; fixing it also ends the dynamic adjustment
    except (OSError, AttributeError):
        pass


def autocast_forward(model: nn.Module, accelerator) -> None:
    """Run `model.forward` under the accelerator's autocast with fp32 outputs, as `Accelerator.prepare` does
    for the models it wraps (a sharded model is not given to prepare: it would add DDP around it)."""
    if accelerator.mixed_precision == "no":
        return
    from accelerate.utils import convert_outputs_to_fp32

    forward = model.forward

    @functools.wraps(forward)
    def under_autocast(*args, **kwargs):
        with accelerator.autocast():
            return forward(*args, **kwargs)

    model.forward = convert_outputs_to_fp32(under_autocast)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on rank 0 (an empty one elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def _order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Each optimised parameter's name, in the order Optimizer.state_dict() numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimiser state on rank 0, numbered like Optimizer.state_dict(); every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    named = get_optimizer_state_dict(model, optimizer, options=_options())
    index = {name: i for i, name in enumerate(_order(model, optimizer))}
    return {
        "state": {index[name]: value for name, value in named.get("state", {}).items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in named.get("param_groups", [])],
    }


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor], state: dict[str, Any]
) -> None:
    """Load a whole checkpoint (model weights and a numbered optimiser state) into the sharded model: each
    process keeps its own shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    order = _order(model, optimizer)
    named = {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, named, options=options)
