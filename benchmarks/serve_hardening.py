"""`convlens serve` under hostile load on 127.0.0.1: the three figures of issue 13.

1. Burst: N POST /predict with heatmap=true, C in flight: how many 200s, how many heatmaps
   identical to the serial ones, whether the server lives, median and p99 latency.
2. Slow clients: S uploads whose bodies trickle in and P sockets sending half a request head are
   held open; the time a normal /predict takes meanwhile, and how long the server keeps the
   half-heads open (closed after --header-timeout, 10 s by default).
3. Event loop: /health latency (p50, p99, max) polled every 10 ms while U uploads of a 202 KB
   64-megapixel PNG decode, 2 at a time.

Targets (issue 13): 96 of 96 answered 200 with serial heatmaps and the server alive; with 64
slow uploads open a normal /predict answers 200 within 2 s; /health p99 under 50 ms.

    .venv/bin/python benchmarks/serve_hardening.py                  # trains a small run first
    .venv/bin/python benchmarks/serve_hardening.py runs/demo        # or serves a run you have
    .venv/bin/python benchmarks/serve_hardening.py --burst 16 --slow 8 --partial 2 --uploads 2
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

RESULTS = Path(__file__).parent / "results" / "serve_hardening.json"
SLOW_HEAD = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
             b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")  # fmt: skip


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def digits(start: int, n: int, size: int = 32) -> list[tuple[int, np.ndarray]]:
    """(label, uint8 image) of scikit-learn's 8x8 digits start..start+n, resized to size."""
    from sklearn.datasets import load_digits

    d = load_digits()
    scaled = (d.images[start : start + n] * 255 / 16).astype(np.uint8)
    resized = [np.asarray(Image.fromarray(x).resize((size, size))) for x in scaled]
    return list(zip(d.target[start : start + n].tolist(), resized, strict=True))


def small_run(root: Path) -> Path:
    """resnet8 on 400 digits at 32x32, one epoch (the test suite's run): about 10 s here."""
    for i, (label, image) in enumerate(digits(0, 400)):
        path = root / "data" / str(label) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(image))
    cmd = [sys.executable, "-m", "convlens", "train", "--data", str(root / "data"),
           "--model", "resnet8", "--epochs", "1", "--batch-size", "64",
           "--run", str(root / "run")]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return root / "run"


def start(run: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "convlens", "serve", str(run), "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def burst(url: str, images: list[bytes], n: int, in_flight: int, proc) -> dict:
    def ask(image: bytes) -> tuple[int, str | None, float]:
        t0 = time.perf_counter()
        try:
            r = httpx.post(f"{url}/predict", files={"file": image}, data={"heatmap": "true"},
                           timeout=120)  # fmt: skip
        except httpx.TransportError:
            return 0, None, time.perf_counter() - t0
        heat = r.json().get("heatmap_png") if r.status_code == 200 else None
        return r.status_code, heat, time.perf_counter() - t0

    serial = [ask(image)[1] for image in images]
    order = [i % len(images) for i in range(n)]
    with ThreadPoolExecutor(in_flight) as pool:
        answers = list(pool.map(ask, [images[i] for i in order]))
    ms = [1000 * t for _, _, t in answers]
    return {
        "requests": n,
        "in_flight": in_flight,
        "ok_200": sum(code == 200 for code, _, _ in answers),
        "identical_to_serial": sum(
            heat == serial[i] for (_, heat, _), i in zip(answers, order, strict=True)
        ),
        "server_alive": proc.poll() is None,
        "p50_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 0.99),
    }


def slow_clients(url: str, image: bytes, slow: int, partial: int, wait_s: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    held = []
    for _ in range(slow):
        s = socket.create_connection((host, int(port)))
        s.sendall(SLOW_HEAD)  # the body never finishes
        held.append(s)
    heads = []
    for _ in range(partial):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        heads.append(s)
    opened = time.perf_counter()
    time.sleep(0.3)
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/predict", files={"file": image}, timeout=30)
    normal = {"status": r.status_code, "ms": 1000 * (time.perf_counter() - t0)}
    closed_after = []
    for s in heads:  # how long each half-head stays open (None: still open after wait_s)
        s.settimeout(max(0.1, wait_s - (time.perf_counter() - opened)))
        try:
            while s.recv(4096):
                pass
            closed_after.append(time.perf_counter() - opened)
        except ConnectionResetError:
            closed_after.append(time.perf_counter() - opened)
        except TimeoutError:
            closed_after.append(None)
        s.close()
    for s in held:
        s.close()
    shut = [t for t in closed_after if t is not None]
    return {
        "slow_uploads": slow,
        "normal_predict_status": normal["status"],
        "normal_predict_ms": normal["ms"],
        "half_heads": partial,
        "half_heads_closed": len(shut),
        "half_heads_closed_after_s_max": max(shut) if shut else None,
    }


def health_while_decoding(url: str, big: bytes, uploads: int) -> dict:
    done, waits, codes = threading.Event(), [], []

    def upload(count: int) -> None:
        for _ in range(count):
            r = httpx.post(f"{url}/predict", files={"file": big}, timeout=120)
            codes.append(r.status_code)

    uploaders = [threading.Thread(target=upload, args=(n,)) for n in
                 (uploads - uploads // 2, uploads // 2) if n]  # fmt: skip
    for t in uploaders:
        t.start()
    watcher = threading.Thread(target=lambda: ([t.join() for t in uploaders], done.set()))
    watcher.start()
    with httpx.Client() as client:
        while not done.is_set():
            t0 = time.perf_counter()
            client.get(f"{url}/health", timeout=30)
            waits.append(1000 * (time.perf_counter() - t0))
            time.sleep(0.01)
    watcher.join()
    return {
        "big_uploads": uploads,
        "big_upload_statuses": sorted(codes),
        "health_requests": len(waits),
        "health_p50_ms": statistics.median(waits),
        "health_p99_ms": percentile(waits, 0.99),
        "health_max_ms": max(waits),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?", help="run to serve [default: train a small one]")
    ap.add_argument("--burst", type=int, default=96, help="heatmap requests in the burst")
    ap.add_argument("--in-flight", type=int, default=8, help="burst requests at once")
    ap.add_argument("--slow", type=int, default=64, help="slow uploads held open")
    ap.add_argument("--partial", type=int, default=10, help="sockets sending half a head")
    ap.add_argument("--uploads", type=int, default=8, help="64-megapixel PNGs decoded")
    ap.add_argument("--wait-s", type=float, default=20, help="how long to watch the half-heads")
    ap.add_argument("--serve-arg", action="append", default=[], help="passed to convlens serve")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or small_run(Path(tmp))
        from convlens.predict import load

        size = load(run).size
        images = [png(np.asarray(Image.fromarray(x).resize(size[::-1])))
                  for _, x in digits(1000, 12)]  # fmt: skip
        big = png(np.full((7999, 8000, 3), (10, 20, 30), np.uint8))  # 202 KB, 64.0 MP
        proc, url = start(run, args.serve_arg)
        try:
            result = {
                "burst": burst(url, images, args.burst, args.in_flight, proc),
                "slow_clients": slow_clients(url, images[0], args.slow, args.partial, args.wait_s),
                "event_loop": health_while_decoding(url, big, args.uploads),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    cpu = platform.processor() or platform.machine()
    result["machine"] = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    result["run"] = str(args.run or "small resnet8 digits run (trained here)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    b, c, e = result["burst"], result["slow_clients"], result["event_loop"]
    after = c["half_heads_closed_after_s_max"]
    rows = [
        ("burst: 200s", f"{b['ok_200']} of {b['requests']} ({b['in_flight']} in flight)"),
        ("burst: heatmaps identical to serial", f"{b['identical_to_serial']} of {b['requests']}"),
        ("burst: server alive after", str(b["server_alive"])),
        ("burst: latency p50 / p99", f"{b['p50_ms']:.0f} / {b['p99_ms']:.0f} ms"),
        (f"{c['slow_uploads']} slow uploads open: a normal /predict",
         f"{c['normal_predict_status']} in {c['normal_predict_ms']:.0f} ms"),
        (f"{c['half_heads']} half-sent heads: closed, latest after",
         f"{c['half_heads_closed']}, {'-' if after is None else f'{after:.1f} s'}"),
        (f"/health while {e['big_uploads']} 64-MP PNGs decode: p50 / p99 / max",
         f"{e['health_p50_ms']:.1f} / {e['health_p99_ms']:.1f} / {e['health_max_ms']:.1f} ms"),
    ]  # fmt: skip
    for name, value in rows:
        print(f"{name:55} {value}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
