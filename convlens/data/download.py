"""Download over HTTP(S): stream to a temp file beside the target, check its digest, rename."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from convlens.errors import ConvlensError
from convlens.runs.atomic import temp_beside

CHUNK = 1 << 20  # bytes per read
TIMEOUT = 60  # seconds without data before giving up
DIGESTS = {"sha256": "SHA-256", "md5": "MD5"}  # MD5: all some sources publish (torchvision's)


def download(
    url: str, dest: str | Path, checksum: str, *, progress: bool = True, algorithm: str = "sha256"
) -> Path:
    """Fetch `url` to `dest` if its `algorithm` digest is `checksum`; else raise, saving nothing."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(dest, ".part")
    try:
        digest = hashlib.new(algorithm)
        got_bytes = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                    size = int(response.headers.get("Content-Length") or 0) or None
                    with _progress(dest.name, size, progress) as advance:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            got_bytes += len(chunk)
                            advance(len(chunk))
            except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
                raise ConvlensError(f"could not download {url}: {_reason(e)}") from None
            if size is not None and got_bytes != size:  # the server closed the connection early
                raise ConvlensError(
                    f"could not download {url}: connection closed after {got_bytes} of {size} bytes"
                )
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != checksum.lower():
            raise ConvlensError(
                f"{url}: {DIGESTS[algorithm]} mismatch, expected {checksum.lower()} but got {got}; "
                "nothing saved"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__


@contextmanager
def _progress(label: str, total: int | None, show: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (stdout may carry --json); yields `advance(n_bytes)`."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn())
    with Progress(*columns, TransferSpeedColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
