"""Bounded load test of `nnrecipe serve` on loopback: eager PyTorch vs ONNX vs ONNX int8.

For each backend a server process is started, `--requests` requests with one input (an image, or a
validation sentence for text/NER runs) each are sent with
`--concurrency` in flight (httpx, asyncio), and throughput, p50/p95/p99 latency and the error count are
printed; the int8 accuracy change comes from the export's own check on the validation split.

    python bench/serve_load.py runs/<image or text run>  # exports ONNX and int8 ONNX first if missing
    python bench/serve_load.py runs/<run> --requests 2000 --concurrency 16
    python bench/serve_load.py runs/<image run> --hostile   # well-formed clients beside attackers

`--hostile` serves the eager model once and sends well-formed requests (as above) while attackers send, at
the same time, requests of 16 images declaring 12,000 x 12,000 pixels, requests of two 2,000 x 2,000 noise
JPEGs (legal, costly to decode), and floods of 256 requests at once; it prints the well-formed clients'
latency and errors, the attackers' status codes, every 5xx, and the server's peak resident memory.
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

from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)

KEY = "bench-key-0123456789"
ATTACKER = "attacker-key-0123456789"  # --hostile: the attackers' own key, held to the rate limit like any other
# --hostile: each key may send 50 requests/s (bursts of 16); the well-formed load spreads over 16 keys, as
# several ordinary clients would, and the attackers share one.
HOSTILE_FLAGS = ("--rate-limit", "50", "--rate-burst", "16")
CLIENT_KEYS = [f"{KEY}-{i}" for i in range(16)]


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


def start_server(run: Path, port: int, onnx: Path | None, precision: str = "fp32", extra=()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nnrecipe.cli", "serve", str(run), "--port", str(port), "--precision", precision]
    cmd += ["--onnx", str(onnx)] if onnx else []
    proc = subprocess.Popen(
        [*cmd, *extra],
        env=os.environ | {"NNRECIPE_API_KEYS": ",".join([KEY, ATTACKER, *CLIENT_KEYS])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


async def load(port: int, images: list[str], requests: int, concurrency: int, keys=(KEY,)) -> dict:
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
                auth = {"Authorization": f"Bearer {keys[i % len(keys)]}"}
                r = await client.post("/v1/predict", json={"inputs": [images[i % len(images)]]}, headers=auth)
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


def declared_png(side: int) -> bytes:
    """A few bytes whose PNG header declares side x side pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def noise_jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=85
    )
    return buf.getvalue()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def hostile(port: int, images: list[str], requests: int, concurrency: int, seconds_cap: float = 120) -> dict:
    """Well-formed load (as `load`) while three kinds of attacker run beside it until it ends."""
    from collections import Counter

    bomb = base64.b64encode(declared_png(12_000)).decode()
    heavy = base64.b64encode(noise_jpeg(2_000)).decode()
    attacks = Counter()
    done = asyncio.Event()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {ATTACKER}"},
        limits=httpx.Limits(max_connections=512),
        timeout=60,
    ) as client:

        async def attacker(name: str, payload: dict, burst: int) -> None:
            while not done.is_set():
                answers = await asyncio.gather(
                    *(client.post("/v1/predict", json=payload) for _ in range(burst)), return_exceptions=True
                )
                for a in answers:  # an exception: the server dropped the connection
                    attacks[f"{name} {a.status_code if isinstance(a, httpx.Response) else type(a).__name__}"] += 1
                await asyncio.sleep(0.05)

        async def measured() -> dict:
            try:
                return await load(port, images, requests, concurrency, CLIENT_KEYS)
            finally:
                done.set()

        t0 = time.perf_counter()
        good, *_ = await asyncio.wait_for(
            asyncio.gather(
                measured(),
                attacker("bomb x16", {"inputs": [bomb] * 16}, 2),
                attacker("2000^2 noise jpeg x2", {"inputs": [heavy] * 2}, 2),
                attacker("flood", {"inputs": [images[0]]}, 256),
            ),
            seconds_cap,
        )
        good["seconds"] = time.perf_counter() - t0
    return good | {"attacks": dict(sorted(attacks.items()))}


def main_hostile(args, run) -> None:
    images = sample_inputs(run.dir)
    proc = start_server(run.dir, args.port, None, "fp32", HOSTILE_FLAGS)
    try:
        before = peak_rss_mb(proc.pid)
        r = asyncio.run(hostile(args.port, images, args.requests, args.concurrency))
        after = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    print(
        f"well-formed: {r['rps']:,.0f} req/s   p50 {r['p50']:.1f} ms   p95 {r['p95']:.1f} ms   p99 {r['p99']:.1f} ms   "
        f"non-200 {r['errors']}   ({args.requests} requests, {args.concurrency} in flight, {r['seconds']:.0f} s)"
    )
    for kind, n in r["attacks"].items():
        print(f"attack {kind}: {n}")
    fives = sum(n for k, n in r["attacks"].items() if k.split()[-1].startswith("5") and k.split()[-1] != "503")
    print(f"attackers' 5xx other than 503 (busy): {fives}; server peak RSS {before:.0f} MB at ready -> {after:.0f} MB")
    print(f"server flags: {' '.join(HOSTILE_FLAGS)} (defaults otherwise); load generator on the same machine")
    print(f"CPU: {cpu_model()}")


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
    ap.add_argument("--hostile", action="store_true", help="well-formed load beside attackers (eager model only)")
    args = ap.parse_args()
    from nnrecipe.deploy.export import export_run
    from nnrecipe.runs import open_run

    run = open_run(args.run)
    if args.hostile:
        return main_hostile(args, run)
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
    print(f"CPU: {cpu_model()}")


if __name__ == "__main__":
    main()
