"""A CPU training process keeps the large blocks a step frees, instead of mapping and faulting them in again
every step (engine/host_memory.py)."""

import subprocess
import sys

import pytest

# A 47 MB tensor (MiniLM's word-embedding gradient) made and freed each step, as a training step does, after
# the engine has picked its device; prints the minor page faults of each step after the first few.
STEPS = """
import resource, torch
from nnrecipe.engine.config import Train
from nnrecipe.engine.loop import make_accelerator

torch.set_num_threads(1)
make_accelerator(Train(device="cpu", precision="fp32"))
faults = []
for step in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    grad = torch.empty(47 * 2**20 // 4).fill_(1.0)
    others = [torch.empty(1000) for _ in range(10)]
    del grad
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[6:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator thresholds")
@pytest.mark.parametrize("setting", ["on", "off"])
def test_a_large_tensor_made_every_step_comes_from_the_heap_not_fresh_pages(setting):
    env = {"NNRECIPE_MALLOC_TUNING": setting, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, env=env, check=True)
    faults = int(out.stdout.split()[-1])
    pages = 47 * 2**20 // 4096  # every page of the tensor, when it is mapped afresh
    if setting == "on":
        assert faults < pages // 100
    else:  # glibc as it ships: munmap on free, mmap and a fault per page on the next step
        assert faults >= pages * 0.9
