"""Downloads against a real HTTP server on 127.0.0.1: checksums, failures, nothing half-written."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from convlens.data import load_dataset, named
from convlens.data.download import download
from convlens.data.idx import write_idx
from convlens.errors import ConvlensError


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def data_server(tmp_path, monkeypatch):
    """(folder served, its base URL): a real HTTP server in a thread, no proxy in between."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_checks_and_saves(data_server, tmp_path):
    root, url = data_server
    data = np.random.default_rng(0).bytes(3_000_000)  # several chunks
    (root / "blob.bin").write_bytes(data)
    dest = tmp_path / "out" / "blob.bin"
    assert download(url + "blob.bin", dest, _sha(data), progress=False) == dest
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]  # no temp file left


def test_progress_bar_goes_to_stderr(data_server, tmp_path, capsys):
    root, url = data_server
    (root / "a.bin").write_bytes(b"abc" * 1000)
    download(url + "a.bin", tmp_path / "a.bin", _sha(b"abc" * 1000), progress=True)
    assert capsys.readouterr().out == ""  # stdout stays free for --json


def test_checksum_mismatch_leaves_nothing(data_server, tmp_path):
    root, url = data_server
    (root / "blob.bin").write_bytes(b"tampered")
    wanted = _sha(b"original")
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(ConvlensError) as e:
        download(url + "blob.bin", dest, wanted, progress=False)
    msg = str(e.value)
    assert url + "blob.bin" in msg and wanted in msg and _sha(b"tampered") in msg
    assert list(dest.parent.iterdir()) == []


def test_http_error_is_one_line(data_server, tmp_path):
    _, url = data_server
    dest = tmp_path / "out" / "missing.bin"
    with pytest.raises(ConvlensError, match="could not download .*missing.bin: HTTP 404") as e:
        download(url + "missing.bin", dest, "0" * 64, progress=False)
    assert "\n" not in str(e.value)
    assert list(dest.parent.iterdir()) == []


def test_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    with pytest.raises(ConvlensError, match=f"could not download http://127.0.0.1:{port}/x"):
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_named_dataset_downloads_into_the_cache(data_server, tmp_path, monkeypatch):
    """A dead first mirror, then the local server: four files fetched, checked and loaded."""
    root, url = data_server
    sums = []
    rng = np.random.default_rng(0)
    for name, n in zip(named.IDX_FILES, (30, 30, 10, 10), strict=True):
        if "images" in name:
            write_idx(root / name, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        else:
            write_idx(root / name, (np.arange(n) % 10).astype(np.uint8))
        sums.append(_sha((root / name).read_bytes()))
    assert gzip.decompress((root / named.IDX_FILES[0]).read_bytes())[:4] == b"\x00\x00\x08\x03"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    local = dataclasses.replace(named.DATASETS["mnist"], mirrors=(dead, url), sha256=tuple(sums))
    monkeypatch.setitem(named.DATASETS, "mnist", local)
    monkeypatch.setattr(named, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CONVLENS_DATA", raising=False)

    ds = load_dataset("mnist")
    cache = Path(tmp_path / "home" / ".cache" / "convlens" / "mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(named.IDX_FILES)
    assert ds.source == str(cache) and len(ds.test) == 10 and len(ds.train) + len(ds.val) == 30
