"""Files written atomically: a reader sees the old file or the new one, never a mix."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from convlens.errors import ConvlensError


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file beside it, fsynced, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        reason = e.strerror or str(e)
        message = f"{path}: cannot write ({reason}); the previous file is intact"
        raise ConvlensError(message) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def check_new_folder(out: Path) -> None:
    """Refuse an `out` that exists and is not an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvlensError(f"{out}: already exists and is not an empty folder; choose a new one")


@contextmanager
def new_tree(out: str | Path) -> Iterator[Path]:
    """A temporary folder beside `out` to build a tree in, renamed to `out` when the block ends
    without error (an interrupted build leaves no half tree); `out` must be new or empty."""
    out = Path(out)
    check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
