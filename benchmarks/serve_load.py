"""Load on `convlens serve` over loopback, and onnxruntime against torch for the same model.

1. Starts `convlens serve RUN` on a free port of 127.0.0.1, sends N requests at concurrency C
   (bounded in count and time, loopback only), and reports throughput, p50/p99 latency, errors;
   then single requests one at a time for the unloaded p50.
2. In this process: images/s of the prediction path (preprocessed uint8 in, probabilities out,
   the run's test-time augmentation included) for torch and for onnxruntime, batch 1 and 64,
   alternating, medians.

    .venv/bin/python benchmarks/serve_load.py runs/demo            # default: 2000 at 16
    .venv/bin/python benchmarks/serve_load.py runs/demo --requests 500 --concurrency 8
    .venv/bin/python benchmarks/serve_load.py runs/demo/weights/best.onnx   # serve via onnxruntime
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from convlens.export import export_onnx
from convlens.predict import load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_png(rec) -> bytes:
    c, (h, w) = rec.channels, rec.size
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, c), dtype=np.uint8).squeeze()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


async def load_test(url: str, png: bytes, n: int, concurrency: int, limit_s: float) -> dict:
    """n POST /predict at `concurrency`, stopping early after `limit_s` seconds."""
    latencies, errors = [], 0
    deadline = time.monotonic() + limit_s
    left = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in left:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            r = await client.post(f"{url}/predict", files={"file": ("x.png", png)})
            latencies.append(1000 * (time.perf_counter() - t0))
            errors += r.status_code != 200

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "per_second": len(latencies) / seconds,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def engines_per_second(run: Path, repeats: int = 15) -> dict:
    """Images/s of torch and onnxruntime prediction at batch 1 and 64, alternating, medians."""
    onnx_file = Path(export_onnx(run, Path("/tmp") / f"{run.name}-serve-load.onnx")["onnx"])
    engines = {"torch": load(run), "onnxruntime": load(onnx_file)}
    c, (h, w) = engines["torch"].channels, engines["torch"].size
    out = {}
    for batch in (1, 64):
        x = torch.randint(0, 256, (batch, c, h, w), dtype=torch.uint8)
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(repeats):
            for name, rec in engines.items():
                t0 = time.perf_counter()
                rec.predict_tensor(x)
                times[name].append(time.perf_counter() - t0)
        for name in engines:
            out[f"{name} batch {batch}"] = batch / statistics.median(times[name])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--limit-s", type=float, default=120, help="stop the load test after this")
    args = ap.parse_args()

    rec = load(args.run)
    png = sample_png(rec)
    port = free_port()
    cmd = [sys.executable, "-m", "convlens", "serve", str(args.run), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        asyncio.run(load_test(url, png, 50, 4, 30))  # warm up
        loaded = asyncio.run(load_test(url, png, args.requests, args.concurrency, args.limit_s))
        single = asyncio.run(load_test(url, png, 200, 1, 60))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"model {rec.meta['model']['name']}, TTA {rec.meta.get('tta', 'none')}")
    print(
        f"load: {loaded['requests']} requests at concurrency {args.concurrency}: "
        f"{loaded['per_second']:.0f} req/s, p50 {loaded['p50_ms']:.1f} ms, "
        f"p99 {loaded['p99_ms']:.1f} ms, {loaded['errors']} errors"
    )
    print(
        f"single requests one at a time: p50 {single['p50_ms']:.1f} ms, "
        f"p99 {single['p99_ms']:.1f} ms, {single['errors']} errors"
    )
    if args.run.suffix != ".onnx":  # a run folder: compare the two engines as well
        for name, value in engines_per_second(args.run).items():
            print(f"{name}: {value:,.0f} images/s")


if __name__ == "__main__":
    main()
