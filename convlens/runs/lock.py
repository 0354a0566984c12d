"""Run folders are never overwritten (runs/train, runs/train2, ...) and each is held by one
training at a time.

A training holds its folder with an exclusive flock on the folder itself from the moment it
chooses it until it ends; the kernel drops the lock when the process dies, however it dies, so
a killed run's folder is free to resume and no lock file is left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from convlens.errors import ConvlensError
from convlens.runs.folder import Run

_HELD: set[int] = set()  # descriptors of the folders this process holds


def _forget_in_child() -> None:
    # A forked child (a decoding worker) shares the locks; closing its copies keeps a child that
    # outlives a killed parent from holding the folder. (Closing does not unlock: only the last
    # descriptor of the lock does.)
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class RunFolderBusy(ConvlensError):
    """Another live training holds the run folder."""


@contextlib.contextmanager
def claim_new_run_dir(requested: str | Path | None, base: str | Path = "runs") -> Iterator[Path]:
    """A fresh folder, held until the block ends: `requested` (or runs/train), with 2, 3, ...
    appended while it holds another run. Another live training in `requested` itself is an
    error; a folder made here and still empty when the block fails is removed."""
    path = Path(requested) if requested else Path(base) / "train"
    n = 1
    while True:
        candidate = path if n == 1 else path.with_name(f"{path.name}{n}")
        made = _missing_dirs(candidate)
        with contextlib.suppress(FileExistsError):
            candidate.mkdir(parents=True)
        fd = _lock(candidate) if candidate.is_dir() else None
        if fd is None and candidate.is_dir() and requested and n == 1:
            raise RunFolderBusy(f"{candidate}: another training is writing to this run folder")
        if fd is not None and not any(candidate.iterdir()):
            break
        if fd is not None:
            _unlock(fd)  # a finished run: never overwritten
        n += 1
    try:
        yield candidate
    except BaseException:
        for folder in made:  # deepest first; stops at the first that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    finally:
        _unlock(fd)


@contextlib.contextmanager
def claim_run_dir_to_resume(requested: str | Path | None) -> Iterator[Path]:
    """The folder of a run to resume (it must hold a saved config), held until the block ends."""
    if not requested:
        raise ConvlensError("--resume needs --run DIR: the run folder to continue")
    path = Path(requested)
    if not Run(path).is_run():
        raise ConvlensError(f"{path}: not a convlens run folder (no config.yaml) to resume")
    fd = _lock(path)
    if fd is None:
        raise RunFolderBusy(f"{path}: another training is writing to this run folder")
    try:
        yield path
    finally:
        _unlock(fd)


def _lock(folder: Path) -> int | None:
    """An exclusive flock on `folder`, or None while another process holds one."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:  # removed by a run that failed: it was empty
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _same_file(fd, folder):  # removed (and perhaps remade) between open and lock
        os.close(fd)
        return _lock(folder) if folder.is_dir() else None
    _HELD.add(fd)
    return fd


def _unlock(fd: int) -> None:
    _HELD.discard(fd)
    os.close(fd)  # the last descriptor: the lock goes with it


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing
