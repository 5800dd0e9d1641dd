"""Bounded load test of `nnrecipe serve` on loopback: eager PyTorch vs ONNX vs ONNX int8.

For each backend a server process is started, `--requests` requests with one input (an image, or a
validation sentence for text/NER runs) each are sent with
`--concurrency` in flight (httpx, asyncio), and throughput, p50/p95/p99 latency and the error count are
printed; the int8 accuracy change comes from the export's own check on the validation split.

    python bench/serve_load.py runs/<image or text run>  # exports ONNX and int8 ONNX first if missing
    python bench/serve_load.py runs/<run> --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

KEY = "bench-key"


def sample_inputs(run: Path, n: int = 64) -> list[str]:
    """Real inputs from the run's data: validation texts for text/NER runs, test images (PNG, base64) otherwise."""
    from nnrecipe.runs import open_run
    from nnrecipe.tasks import family_of

    r = open_run(run)
    family = family_of(r)
    splits = family.splits(r.recipe())
    if family.predict_inputs == "texts":
        part = splits.val or splits.test
        return part.texts[:n] if hasattr(part, "texts") else [" ".join(w) for w in part.words[:n]]
    part = splits.test
    out = []
    for img in part.images[:n]:
        array = img.permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def start_server(run: Path, port: int, onnx: Path | None, precision: str = "fp32") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nnrecipe.cli", "serve", str(run), "--port", str(port), "--precision", precision]
    cmd += ["--onnx", str(onnx)] if onnx else []
    proc = subprocess.Popen(
        cmd, env=os.environ | {"NNRECIPE_API_KEYS": KEY}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


async def load(port: int, images: list[str], requests: int, concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    latencies, errors = [], 0
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {KEY}"},
        limits=httpx.Limits(max_connections=concurrency),
        timeout=30,
    ) as client:

        async def one(i: int) -> None:
            nonlocal errors
            async with sem:
                t = time.perf_counter()
                r = await client.post("/v1/predict", json={"inputs": [images[i % len(images)]]})
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200

        await one(0)  # warm-up
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "rps": requests / seconds,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--port", type=int, default=8311)
    ap.add_argument(
        "--eager",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16"],
        help="eager PyTorch precisions to load-test (the ratios are against the first)",
    )
    args = ap.parse_args()
    from nnrecipe.deploy.export import export_run
    from nnrecipe.runs import open_run

    run = open_run(args.run)
    fp32, int8 = run.dir / "export" / "model.onnx", run.dir / "export" / "model.int8.onnx"
    card = export_run(run, "onnx", quantize="int8") if not int8.exists() else None
    images = sample_inputs(run.dir)
    rows = {}
    backends = [(f"eager {p}", None, p) for p in args.eager] + [
        ("onnx fp32", fp32, "fp32"),
        ("onnx int8", int8, "fp32"),
    ]
    for name, onnx, precision in backends:
        proc = start_server(run.dir, args.port, onnx, precision)
        try:
            rows[name] = asyncio.run(load(args.port, images, args.requests, args.concurrency))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        r = rows[name]
        print(
            f"{name:14s} {r['rps']:8,.0f} req/s   p50 {r['p50']:6.1f} ms   p95 {r['p95']:6.1f} ms   p99 {r['p99']:6.1f} ms   "
            f"errors {r['errors']}",
            flush=True,
        )
    base = rows[f"eager {args.eager[0]}"]["rps"]
    print(f"throughput vs eager {args.eager[0]}: " + ", ".join(f"{k} {v['rps'] / base:.2f}x" for k, v in rows.items()))
    if card:
        c = card["checks"]
        print(
            f"int8 accuracy on validation: {c['accuracy_fp32']:.4f} -> {c['accuracy_int8']:.4f} ({c['accuracy_change']:+.4f})"
        )
    print(f"{args.requests} requests of one input each, {args.concurrency} concurrent, 1 server worker, loopback")


if __name__ == "__main__":
    main()
