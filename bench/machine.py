"""What every bench prints beside its figures: the CPU model, as lscpu names it."""

from __future__ import annotations

import subprocess


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
