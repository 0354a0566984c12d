"""The server under hostile load, over real HTTP on 127.0.0.1: concurrent Grad-CAM, slow and
half-sent requests, big decodes beside /health, foreign Host headers, and what it leaves behind."""

from __future__ import annotations

import functools
import io
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import convlens, start_server

ROOT = Path(__file__).resolve().parent.parent


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@functools.cache
def _sklearn_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def _digit(i: int) -> np.ndarray:
    """Digit i of scikit-learn's 8x8 digits as a 32x32 uint8 image."""
    image = (_sklearn_digits().images[i] * 255 / 16).astype(np.uint8)
    return np.asarray(Image.fromarray(image).resize((32, 32)))


@pytest.fixture(scope="module")
def digits() -> list[bytes]:
    """Twelve digit PNGs the run did not train on, each a different image."""
    return [_png(_digit(i)) for i in range(1000, 1012)]


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A 202 KB PNG of 8000x7999 RGB pixels, just under the 64-megapixel limit: slow to decode."""
    return _png(np.full((7999, 8000, 3), (10, 20, 30), np.uint8))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """resnet8 on 400 digits at 32x32, one epoch: heatmaps slow enough for requests to overlap."""
    root = tmp_path_factory.mktemp("hardening")
    for i, label in enumerate(_sklearn_digits().target[:400]):
        path = root / "data" / str(label) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(_digit(i)))
    out = convlens("train", "--data", root / "data", "--model", "resnet8", "--epochs", "1",
                   "--batch-size", "64", "--threads", "1", "--run", root / "run")  # fmt: skip
    assert out.returncode == 0, out.stderr
    return root / "run"


@pytest.fixture(scope="module")
def guarded(run, tmp_path_factory):
    """A server with short timeouts and eight slots; its log and temporary folder kept to read."""
    root = tmp_path_factory.mktemp("guarded")
    (root / "tmp").mkdir()
    log = open(root / "server.log", "w")  # noqa: SIM115 (the server writes it until the end)
    proc, url = start_server(run, "--max-in-flight", "8", "--header-timeout", "1",
                             "--body-timeout", "2", "--allowed-host", "my.lan",
                             env={"TMPDIR": str(root / "tmp")}, stderr=log)  # fmt: skip
    yield {"url": url, "proc": proc, "log": root / "server.log", "tmp": root / "tmp"}
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _closed_within(s: socket.socket, seconds: float) -> bytes:
    """Everything the server sends on `s` until it closes it; fails if it stays open `seconds`."""
    s.settimeout(seconds)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open past {seconds} s (got {got[:60]!r})")
    return got


def threads_vs_serial() -> None:
    """Prints {"errors", "identical", "grads"}: Grad-CAM of 96 images from 8 threads on one model.

    Run in a subprocess by the test below: before the fix, this crashed the interpreter.
    """
    from convlens.explain.gradcam import grad_cam
    from convlens.models import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("textbook", in_channels=1, num_classes=10, image_size=8).eval()
    xs = [torch.randn(1, 1, 8, 8) for _ in range(96)]
    serial = [grad_cam(model, x)[0] for x in xs]
    errors, identical = [], 0
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(grad_cam, model, x) for x in xs]
        for future, want in zip(futures, serial, strict=True):
            try:
                identical += torch.equal(future.result()[0], want)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
    grads = sum(p.grad is not None for p in model.parameters())
    print(json.dumps({"errors": errors[:3], "identical": identical, "grads": grads}))


def test_gradcam_from_eight_threads_on_one_model_matches_serial():
    code = "from tests.test_serve_hardening import threads_vs_serial; threads_vs_serial()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)  # fmt: skip
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-500:]}"
    result = json.loads(out.stdout)
    assert result == {"errors": [], "identical": 96, "grads": 0}


def test_gradcam_leaves_the_parameters_and_the_mode_alone():
    from convlens.explain.gradcam import grad_cam, saliency
    from convlens.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet8", in_channels=1, num_classes=4, image_size=16).eval()
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # a training step's gradients: not Grad-CAM's to touch
    modes: list[bool] = []
    train = model.train
    model.train = lambda mode=True: modes.append(mode) or train(mode)  # records mode flips
    x = torch.randn(2, 1, 16, 16)
    grad_cam(model, x)
    grad_cam(model, x, layer="layer2")
    saliency(model, x)
    assert modes == []  # an eval-mode model is never switched, not even to eval
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def test_heatmap_burst_answers_every_request_like_serial(guarded, digits):
    def ask(image: bytes) -> httpx.Response:
        return httpx.post(f"{guarded['url']}/predict", files={"file": image},
                          data={"heatmap": "true"}, timeout=120)  # fmt: skip

    serial = [ask(image).json()["heatmap_png"] for image in digits]
    assert all(serial)
    burst = [digits[i % len(digits)] for i in range(96)]
    with ThreadPoolExecutor(8) as pool:  # 8 requests in flight, as many as the slots
        answers = list(pool.map(ask, burst))
    assert [r.status_code for r in answers] == [200] * 96
    heatmaps = [r.json()["heatmap_png"] for r in answers]
    assert heatmaps == [serial[i % len(digits)] for i in range(96)]
    assert guarded["proc"].poll() is None
    assert httpx.get(f"{guarded['url']}/health").status_code == 200


def test_slow_uploads_hold_no_slot(guarded, digits):
    held = []
    for _ in range(64):  # bodies that are still arriving: no slot until they are in
        s = socket.create_connection(_address(guarded["url"]))
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                  b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")  # fmt: skip
        held.append(s)
    time.sleep(0.3)
    try:
        r = httpx.post(f"{guarded['url']}/predict", files={"file": digits[0]}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        for s in held:
            s.close()


def test_a_body_that_never_ends_gets_408_and_the_connection_closes(guarded):
    s = socket.create_connection(_address(guarded["url"]))
    s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
              b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")  # fmt: skip
    with s:
        got = _closed_within(s, 15)  # body timeout 2 s, then the header timeout (1 s)
    assert got.startswith(b"HTTP/1.1 408"), got[:80]


def test_half_sent_headers_are_closed(guarded):
    sockets = []
    for _ in range(10):
        s = socket.create_connection(_address(guarded["url"]))
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        sockets.append(s)
    for s in sockets:
        with s:
            assert _closed_within(s, 15) == b""  # header timeout 1 s: closed without an answer
    assert httpx.get(f"{guarded['url']}/health").status_code == 200


def test_health_answers_while_big_images_decode(guarded, run, big_png):
    from convlens.predict import load

    rec = load(run)
    t0 = time.perf_counter()
    rec.preprocess(big_png)
    decode = time.perf_counter() - t0  # one decode here, as busy as the server's machine
    stop, waits = threading.Event(), []

    def upload() -> None:
        for _ in range(2):
            httpx.post(f"{guarded['url']}/predict", files={"file": big_png}, timeout=120)
        stop.set()

    uploaders = [threading.Thread(target=upload) for _ in range(2)]  # two decoding at a time
    for t in uploaders:
        t.start()
    start = time.perf_counter()
    with httpx.Client() as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            assert client.get(f"{guarded['url']}/health", timeout=30).status_code == 200
            waits.append(time.perf_counter() - t0)
            time.sleep(0.01)
    elapsed = time.perf_counter() - start
    for t in uploaders:
        t.join()
    # Decodes on the event loop would stall /health for the whole upload, one decode after
    # another; off it, a busy machine (the other test worker) may still pause it once or twice.
    stalled = sum(w for w in waits if w > decode / 8)
    assert len(waits) > 5 and stalled < elapsed / 2, (stalled, elapsed, decode, max(waits))


@pytest.mark.parametrize("top_k", ["0", "-3"])
def test_top_k_below_one_is_422(guarded, digits, top_k):
    r = httpx.post(f"{guarded['url']}/predict", files={"file": digits[0]}, data={"top_k": top_k})
    assert r.status_code == 422 and "top_k" in r.json()["error"]


def test_only_local_host_names_reach_a_loopback_server(guarded):
    url, port = guarded["url"], _address(guarded["url"])[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "my.lan"):
        assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == 200, host
    for host in (f"attacker.example:{port}", "127.0.0.1.nip.io", "my.lan.attacker.example"):
        assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == 400, host


def test_no_openapi_schema_without_docs(guarded):
    assert httpx.get(f"{guarded['url']}/openapi.json").status_code == 404
    assert httpx.get(f"{guarded['url']}/docs").status_code == 404


def test_malformed_requests_do_not_flood_the_log(guarded):
    for _ in range(50):
        with socket.create_connection(_address(guarded["url"])) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            _closed_within(s, 15)
    assert httpx.get(f"{guarded['url']}/health").status_code == 200
    lines = [x for x in guarded["log"].read_text().splitlines() if "Invalid HTTP" in x]
    assert 1 <= len(lines) <= 2, lines


def test_serve_leaves_no_temporary_onnx_file(guarded):
    assert httpx.get(f"{guarded['url']}/model").json()["engine"] == "onnxruntime"
    assert list(guarded["tmp"].rglob("*.onnx")) == []  # loaded, then removed at once


def test_an_allowed_host_with_a_port_is_a_one_line_error(run):
    out = convlens("serve", run, "--allowed-host", "my.lan:8000", timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "convlens: error: --allowed-host 'my.lan:8000': expected a host name without a port, "
        "*.domain or [IPv6 address]"
    ]


def test_the_header_timer_tells_unread_bytes_from_a_silent_client():
    """The header timeout re-arms rather than closes when the request already waits on the
    socket (a loop too busy to read it): `_pending` must see such bytes on a real connection,
    and see none while the client is silent."""
    import asyncio

    from convlens.serve.server import _pending

    async def scenario() -> tuple[bool, bool, bool]:
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        class Paused(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                transport.pause_reading()  # as a starved loop: nothing is read
                got.set_result(transport)

        srv = await asyncio.get_running_loop().create_server(Paused, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = await got
        silent = _pending(transport)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        for _ in range(100):  # loopback delivers at once; allow a slow machine 1 s
            if _pending(transport):
                break
            await asyncio.sleep(0.01)
        waiting = _pending(transport)
        transport.close()
        await asyncio.sleep(0)
        closed = _pending(transport)
        writer.close()
        srv.close()
        return silent, waiting, closed

    silent, waiting, closed = asyncio.run(scenario())
    assert not silent and waiting and not closed
