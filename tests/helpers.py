"""Shared by the tests: run the real command line in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests import warm  # at collection, so the warm interpreter gets the environment of then


def convlens(
    *args: object, timeout: float = 300, env: dict | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run `python -m convlens ARGS` and capture its output; `env` adds variables."""
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "convlens", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def convlens_warm(
    *args: object, timeout: float = 300, env: dict | None = None, cwd=None
) -> subprocess.CompletedProcess:
    """convlens() in a process forked from an interpreter that has imported torch already (the
    same command, exit code and output, without the cold start; see tests/warm.py)."""
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return warm.run(list(map(str, args)), env, timeout=timeout, cwd=cwd)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_chromium(playwright):
    """Debian's chromium, headless, driven by Playwright (the Makefile installs chromium)."""
    import shutil

    return playwright.chromium.launch(
        executable_path=shutil.which("chromium"),
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"],
    )  # fmt: skip


def open_page(browser, url: str, height: int = 700) -> tuple[object, list[str]]:
    """A 1000-pixel-wide page of `browser` at `url`, and the list its console errors land in."""
    page = browser.new_page(viewport={"width": 1000, "height": height})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    return page, errors


def start_server(
    target, *extra, env: dict | None = None, stderr=subprocess.DEVNULL
) -> tuple[subprocess.Popen, str]:
    """`convlens serve TARGET` on a free port of 127.0.0.1: (process, base URL) once healthy;
    `env` adds variables, `stderr` takes the server's log (a file, say)."""
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "convlens", "serve", str(target), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> float:
    """Reset this process's peak resident set (Linux clear_refs 5); its current size, MB.

    ru_maxrss is no use here: it never goes down, and a child started by fork inherits the
    parent's peak across exec, so a test worker's 1 GB would hide a child's growth."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """The peak resident set since the last reset_peak_rss (or since exec), MB."""
    return _status_kb("VmHWM") / 1024


PEAK_RSS_CODE = (  # the same two functions for scripts run in a child interpreter
    "def reset_peak_rss():\n"
    "    open('/proc/self/clear_refs', 'w').write('5')\n"
    "def peak_rss_mb():\n"
    "    return next(int(l.split()[1]) for l in open('/proc/self/status')\n"
    "                if l.startswith('VmHWM:')) / 1024\n"
)


def saved_decision(run, key: str) -> dict:
    """A decision a run saved in its best weights' header: "operating_point" (a two-class run's;
    older runs wrote weights/threshold.json) or "label_thresholds" (older: thresholds.json)."""
    import json

    from safetensors import safe_open

    with safe_open(run / "weights" / "best.safetensors", "pt") as f:
        return json.loads(f.metadata()["convlens"])[key]


def seven_png(path):
    """The last 7 of scikit-learn's digits as an 8x8 grey PNG at `path`."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = int(np.flatnonzero(d.target == 7)[-1])
    Image.fromarray((d.images[idx] * 255 / 16).astype(np.uint8)).save(path)
    return path


def without_faiss(code: str) -> list[str]:
    """The lines `code` prints in a child interpreter where `import faiss` fails (ImportError)."""
    child = "import sys; sys.modules['faiss'] = None\n" + code
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()
