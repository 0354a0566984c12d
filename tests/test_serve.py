"""The HTTP server over real HTTP on 127.0.0.1: answers, limits, and the page in a browser."""

import base64
import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import convlens_warm as convlens
from tests.helpers import launch_chromium, open_page, seven_png, start_server

ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots the tests keep (git-ignored)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("serve") / "run"
    out = convlens("train", "--data", "digits", "--model", "textbook", "--epochs", "6",
                   "--batch-size", "32", "--run", run)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return run


@pytest.fixture(scope="module")
def server(run):
    proc, url = start_server(run, "--max-in-flight", "2")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    return seven_png(tmp_path_factory.mktemp("img") / "seven.png")


def test_predict_answers_like_the_cli(server, run, digit_png):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    info = httpx.get(f"{server}/model").json()
    assert info["classes"] == [str(i) for i in range(10)] and info["task"] == "classify"
    assert info["engine"] == "onnxruntime"  # predictions through an ONNX export made at start
    r = httpx.post(f"{server}/predict", files={"file": digit_png.read_bytes()},
                   data={"top_k": "3", "heatmap": "true"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "task", "predictions", "heatmap_png", "time_ms"}
    assert len(body["predictions"]) == 3
    cli = json.loads(convlens("predict", run, digit_png, "--json", "--top-k", "3").stdout)[0]
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in cli["predictions"]]
    assert body["predictions"][0]["score"] == pytest.approx(cli["predictions"][0]["score"], 1e-5)
    png = base64.b64decode(body["heatmap_png"])
    assert png.startswith(b"\x89PNG")


def test_limits_fail_closed_and_the_server_keeps_answering(server, digit_png):
    big = httpx.post(f"{server}/predict", files={"file": b"\0" * (10 * 1024 * 1024 + 1)})
    assert big.status_code == 413
    junk = httpx.post(f"{server}/predict", files={"file": ("junk.png", b"not an image")})
    assert junk.status_code == 422 and "junk.png" in junk.json()["error"]
    header = {"Content-Type": "multipart/form-data; boundary=xyz"}
    malformed = httpx.post(f"{server}/predict", content=b"garbage", headers=header)
    assert malformed.status_code == 400
    assert httpx.post(f"{server}/verify", files={"file1": b"x"}).status_code == 404  # no faces
    missing = httpx.post(f"{server}/predict", data={"top_k": "2"})
    assert missing.status_code == 400 and "'file'" in missing.json()["error"]
    # A decompression bomb: a 1-bit PNG of 10000x10000 pixels, tiny on disk.
    bomb = Path(digit_png).with_name("bomb.png")
    Image.new("1", (10_000, 10_000)).save(bomb)
    r = httpx.post(f"{server}/predict", files={"file": bomb.read_bytes()})
    assert r.status_code == 422 and "pixel" in r.json()["error"]
    ok = httpx.post(f"{server}/predict", files={"file": digit_png.read_bytes()})
    assert ok.status_code == 200


def test_more_requests_in_flight_than_the_cap_get_503(server, digit_png):
    # Six 64-megapixel PNGs (202 KB each, about a second to decode) at once, on two slots.
    buf = io.BytesIO()
    Image.new("RGB", (8000, 7999), (10, 20, 30)).save(buf, format="PNG")

    def ask(_) -> httpx.Response:
        return httpx.post(f"{server}/predict", files={"file": buf.getvalue()}, timeout=120)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 503 in codes and set(codes) == {200, 503}, codes
    assert all(r.headers["Retry-After"] == "1" for r in answers if r.status_code == 503)
    again = httpx.post(f"{server}/predict", files={"file": digit_png.read_bytes()})
    assert again.status_code == 200


def test_serves_an_onnx_export(run, digit_png):
    assert convlens("export", run).returncode == 0
    proc, url = start_server(run / "weights" / "best.onnx")
    try:
        r = httpx.post(f"{url}/predict", files={"file": digit_png.read_bytes()})
        assert r.status_code == 200 and r.json()["heatmap_png"] is None
        torch_top = json.loads(convlens("predict", run, digit_png, "--json").stdout)[0]
        assert r.json()["predictions"][0]["label"] == torch_top["predictions"][0]["label"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_page_in_a_real_browser(server, run, digit_png):
    from playwright.sync_api import sync_playwright

    cli = json.loads(convlens("predict", run, digit_png, "--json").stdout)[0]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page, errors = open_page(browser, server + "/", height=700)
        page.wait_for_function("document.getElementById('about').textContent.includes('textbook')")
        page.set_input_files("#file", str(digit_png))
        page.wait_for_selector(".bar")
        top = page.locator(".bar").first.get_attribute("data-label")
        page.wait_for_selector("#heat:not([hidden])")
        page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
        browser.close()
    assert top == cli["predictions"][0]["label"]
    assert not errors, errors
