"""Shared by the tests: run the real command line in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def convlens(*args: object, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m convlens ARGS` and capture its output."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "convlens", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
