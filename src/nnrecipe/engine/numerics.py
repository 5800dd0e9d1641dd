"""Floating-point settings a training run needs regardless of the model, and what the CPU computes natively."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat subnormal floats (below ~1.2e-38) as zero on the CPU for the duration.

    Adam's moment estimates for parameters whose gradient has become zero (dead ReLU units) decay
    geometrically into the subnormal range, where x86 arithmetic is many times slower: on the CartPole
    DQN this made the fused Adam step ~5x slower late in training. Flushing them changes no result that
    matters (sqrt of such a value is far below Adam's eps). Usable as a decorator; restores the default
    (off) afterwards so the setting does not leak into the caller's process."""
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def cpu_bf16_units() -> str:
    """The CPU's native bf16 matrix hardware, in words ("" when there is none): Intel AMX tiles (Sapphire
    Rapids and later), or AVX512-BF16 dot products (AMD Zen 4 and later, Intel Cooper Lake). Without either,
    bf16 is emulated and slower than fp32."""
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return ""


# What a run that asked for bf16 on a CPU without such units is told (a MiniLM step took 10.8 s against
# 0.43 s in fp32 on an AVX2-only AMD EPYC: a run took ~25x as long, unexplained).
EMULATED_BF16 = "this CPU has no bf16 units (AMX or AVX512-BF16), so bf16 is emulated: many times slower than fp32"
