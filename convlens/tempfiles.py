"""Temporary files beside the file they will replace, made with the mode open() would give."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def temp_beside(path: str | Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, empty `.NAME.<random>SUFFIX` in `path`'s folder, open for writing: (fd, path).

    Its mode is 0666 less the umask, as for any file open() makes, so once renamed over `path`
    it has the mode `path` would have had (tempfile.mkstemp always gives 0600).
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")
