"""`train.precision: auto` decided by the clock where the hardware alone cannot say.

A CPU with bf16 units (AMX, AVX512-BF16) runs a MiniLM step much faster under bf16 autocast, but small
convnets may get slower (digits LeNet-5 on AMX: 3.3 s vs 1.7 s) or faster (the CIFAR ConvNet on an AMD
EPYC: about 1.9x). So for models not known to be matmul-heavy, a few training steps of the run's own
model on its own first batch are timed in both precisions, and bf16 is kept only when it is clearly
faster. The answer is cached per machine, torch version, thread count, model and batch shape, so a
machine pays for it once; `NNRECIPE_PRECISION_PROBE=off` keeps such runs in fp32 without timing
(the test suite sets it, so its results do not depend on the clock).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnrecipe.engine.seeding import rng_state, set_rng_state

MARGIN = 1.1  # bf16 must be at least this much faster: its rounding is a (small) cost of its own
BUDGET_S = 3.0  # timed steps stop after about this long (at least MIN_REPS of each)
MIN_REPS, MAX_REPS = 2, 5


def probe_enabled() -> bool:
    return os.environ.get("NNRECIPE_PRECISION_PROBE", "on").lower() not in ("off", "0", "false", "no")


def cache_path() -> Path:
    """Where the timings are remembered: $NNRECIPE_CACHE_DIR, else $XDG_CACHE_HOME/nnrecipe or ~/.cache/nnrecipe."""
    root = os.environ.get("NNRECIPE_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnrecipe")
    return Path(root) / "precision.json"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo's, as lscpu prints it), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def batch_signature(batch: Any) -> str:
    """Shapes and dtypes of a batch's tensors (nested lists, tuples and dicts), for the cache key."""
    if isinstance(batch, torch.Tensor):
        return f"{str(batch.dtype).removeprefix('torch.')}{list(batch.shape)}"
    if isinstance(batch, (list, tuple)):
        return (
            "("
            + ",".join(batch_signature(b) for b in batch[:4])
            + (f",...{len(batch)}" if len(batch) > 4 else "")
            + ")"
        )
    if isinstance(batch, dict):
        return "{" + ",".join(f"{k}:{batch_signature(batch[k])}" for k in sorted(batch, key=str)) + "}"
    return type(batch).__name__


def cache_key(model: nn.Module, batch: Any, device: torch.device) -> str:
    """Machine, software and workload (the model's memory format included). Parameters rounded to 2
    significant digits: a continual stage's wider head is the same workload."""
    n = sum(p.numel() for p in model.parameters())
    layout = next(
        (" channels_last" for p in model.parameters() if p.dim() == 4 and not p.is_contiguous()
         and p.is_contiguous(memory_format=torch.channels_last)), "",
    )  # fmt: skip
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return (
        f"{where} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
        f"{type(model).__name__}{layout} {float(f'{n:.2g}'):.0f} params | {batch_signature(batch)}"
    )


def time_precisions(step: Callable[[bool], None]) -> dict[str, float]:
    """Median seconds of `step(bf16)` in fp32 and in bf16, alternated so that a drifting clock hurts
    both alike; one untimed warm-up of each first."""
    step(False), step(True)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    started = time.perf_counter()
    while len(times["fp32"]) < MAX_REPS and (len(times["fp32"]) < MIN_REPS or time.perf_counter() - started < BUDGET_S):
        for name in ("fp32", "bf16"):
            t0 = time.perf_counter()
            step(name == "bf16")
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def training_step(model: nn.Module, task: Any, batch: Any, device: torch.device) -> Callable[[bool], None]:
    """One forward and backward pass of `task.training_loss` on a copy of the model (the run's own weights,
    BatchNorm statistics and gradients stay untouched); no optimiser step (the same work in both)."""
    twin = copy.deepcopy(model).to(device).train()

    def step(bf16: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = task.training_loss(twin, batch)
        loss.float().backward()
        twin.zero_grad(set_to_none=True)

    return step


def decide(model: nn.Module, task: Any, batch: Any, device: torch.device) -> tuple[str, str]:
    """("bf16" or "fp32", why): from the cache, else by timing (and remembered). The global RNG states are
    restored afterwards, so a run that probed trains exactly as one that did not."""
    path, key = cache_path(), cache_key(model, batch, device)
    known = read_cache(path)
    if key in known:
        t = known[key]
        return pick(t["fp32"], t["bf16"], f"timed before, kept in {path}")
    saved = rng_state()
    started = time.perf_counter()
    try:
        t = time_precisions(training_step(model, task, batch, device))
    except (RuntimeError, NotImplementedError, TypeError) as e:  # an op without a bf16 kernel, say
        return "fp32", f"auto: a bf16 training step failed here ({str(e).splitlines()[0][:120]})"
    finally:
        set_rng_state(saved)
    write_cache(path, {**known, key: t})
    return pick(t["fp32"], t["bf16"], f"timed in {time.perf_counter() - started:.1f} s, kept in {path}")


def pick(fp32: float, bf16: float, source: str) -> tuple[str, str]:
    ratio = fp32 / max(bf16, 1e-12)
    timing = f"a training step {fp32 * 1e3:.3g} ms in fp32, {bf16 * 1e3:.3g} ms in bf16; {source}"
    if ratio >= MARGIN:
        return "bf16", f"auto: {ratio:.2f}x faster than fp32 for this model here: {timing}"
    return "fp32", f"auto: bf16 only {ratio:.2f}x as fast for this model here (needs {MARGIN}x): {timing}"


def read_cache(path: Path) -> dict[str, dict[str, float]]:
    """The remembered timings; a missing or unreadable file is an empty memory (it is only a cache)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and {"fp32", "bf16"} <= set(v)}


def write_cache(path: Path, data: dict[str, dict[str, float]]) -> None:
    """Atomically (a reader never sees half a file); an unwritable cache is silently not kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".precision.", suffix=".json")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
