"""Streamed vs in-memory image data (issue 17): the CIFAR-10 JPEG tree, the bundled ConvNet recipe, the same
run twice, once with every image decoded into memory first (`data.stream: false`) and once decoded batch
by batch in DataLoader workers (`data.stream: true`), each in its own process so that its peak resident
memory is its own.

With `--shards`, a third run reads the tree packed into WebDataset shards first (`nnrecipe pack`, timed),
streamed from them (`data.source: shards`).

Printed per path: training samples/s of each epoch (the engine's own figure: the epoch loop, decoding
included when streamed), the time to load the data before the first step, the total wall time and the peak
RSS; then streamed / in-memory throughput.

    python bench/stream_vs_memory.py --tree ../shared/datasets/cifar10-jpeg/train --epochs 2
    python bench/stream_vs_memory.py --tree ... --workers 2 --limit 20000
    python bench/stream_vs_memory.py --tree ... --epochs 2 --shards
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]

ONE_RUN = """
import json, sys, time
t0 = time.perf_counter()
from nnrecipe.recipe import load_recipe
from nnrecipe.runs import create_run
from nnrecipe.tasks import get_family
def peak_mb():  # VmHWM: this program's own peak (ru_maxrss keeps a forked parent's from before exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
recipe = load_recipe(sys.argv[1], sys.argv[2:])
family = get_family("image_classification")
run = create_run(recipe, "stream-bench")
result = family.train(recipe, run)
rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
print(json.dumps({
    "samples_per_s": [r["samples_per_s"] for r in rows],
    "epoch_seconds": [r["epoch_seconds"] for r in rows],
    "accuracy": result.get("accuracy"),
    "wall_s": time.perf_counter() - t0,
    "peak_mb": peak_mb(),
}))
"""


def run_once(tree: Path, stream: bool, args, out: Path, source: str = "imagefolder") -> dict:
    sets = [
        f"data.source={source}",
        f"data.path={tree}",
        "data.test_fraction=0.1",
        f"data.stream={str(stream).lower()}",
        f"data.workers={args.workers}",
        f"train.epochs={args.epochs}",
        f"track.runs_dir={out}",
        "track.progress=false",
        "track.tensorboard=false",
        "track.plots=false",
    ]
    sets += [f"data.limit={args.limit}"] if args.limit else []
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", ONE_RUN, str(ROOT / "recipes/cifar10-convnet.yaml"), *sets],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    row = json.loads(res.stdout.strip().splitlines()[-1])
    row["outside_s"] = time.perf_counter() - t
    row["before_training_s"] = row["wall_s"] - sum(row["epoch_seconds"])
    return row


def show(name: str, r: dict) -> dict:
    print(
        f"{name:10s} samples/s per epoch {', '.join(f'{v:,.0f}' for v in r['samples_per_s'])}   "
        f"loading before the first step {r['before_training_s']:.0f} s   wall {r['wall_s']:.0f} s   "
        f"peak RSS {r['peak_mb']:,.0f} MB   accuracy {r['accuracy']:.4f}",
        flush=True,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=ROOT.parent / "shared/datasets/cifar10-jpeg/train")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", default="auto", help="data.workers for the streamed run")
    ap.add_argument("--limit", type=int, default=0, help="data.limit: train on the first N images only")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-stream")
    ap.add_argument("--shards", action="store_true", help="also pack the tree into shards and train from them")
    args = ap.parse_args()
    rows = {}
    for stream in (False, True):
        name = "streamed" if stream else "in memory"
        show(name, rows.setdefault(name, run_once(args.tree, stream, args, args.out)))
    if args.shards:
        from nnrecipe.data.shards import pack_image_folder

        packed = args.out / "shards"
        shutil.rmtree(packed, ignore_errors=True)
        t = time.perf_counter()
        done = pack_image_folder(args.tree, packed, 256.0)
        print(f"packed {done['samples']:,} images into {done['shards']} shard(s) in {time.perf_counter() - t:.0f} s")
        r = show("shards", run_once(packed, True, args, args.out, "shards"))
        print(f"shards / in memory: {r['samples_per_s'][-1] / rows['in memory']['samples_per_s'][-1]:.2f}x samples/s")
    a, b = rows["in memory"], rows["streamed"]
    last = b["samples_per_s"][-1] / a["samples_per_s"][-1]
    print(
        f"streamed / in memory: {last:.2f}x samples/s (last epoch), {a['wall_s'] / b['wall_s']:.2f}x wall time; "
        f"peak RSS {b['peak_mb']:,.0f} vs {a['peak_mb']:,.0f} MB"
    )
    print(f"machine: {cpu_model()}; workers {args.workers}; {args.epochs} epochs; tree {args.tree}")


if __name__ == "__main__":
    main()
