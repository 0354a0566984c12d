"""Open data files: regular files only (never a FIFO, a device or a socket), whole reads capped.

Every loader opens its files here. A FIFO named `x.png` would block the open forever and
`/dev/zero` would be read until memory runs out, so the type is checked on the opened file
(after symlinks are followed), which no rename between a check and the open can get around.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from convlens.errors import DatasetFormatError

MAX_FILE_BYTES = 512 << 20  # one file read whole: 64 megapixels of 16-bit RGBA, uncompressed
KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def open_regular(path: str | Path, *, name: str | None = None) -> BinaryIO:
    """`path` opened for binary reading, or DatasetFormatError unless it is a regular file."""
    name = name or str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once, not on a writer
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name (from a CSV, say)
        raise DatasetFormatError(
            f"{name}: cannot read ({getattr(e, 'strerror', None) or e})"
        ) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = KINDS.get(stat.S_IFMT(mode), "not a file")
        raise DatasetFormatError(f"{name}: not a regular file ({kind})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(
    path: str | Path, *, limit: int = MAX_FILE_BYTES, name: str | None = None
) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or DatasetFormatError naming it."""
    name = name or str(path)
    with open_regular(path, name=name) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            data = f.read(limit + 1) if size <= limit else b""  # it may grow while read
        except OSError as e:
            raise DatasetFormatError(f"{name}: cannot read ({e.strerror or e})") from None
    if size > limit or len(data) > limit:
        size = max(size, len(data))
        raise DatasetFormatError(
            f"{name}: {size} bytes, over the {limit / 2**20:g} MiB limit for one file"
        )
    return data
