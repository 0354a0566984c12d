"""The server for the application tasks: POST /verify and its form on a face embedding run, and
an anomaly score with its flag on an anomaly run; real HTTP on 127.0.0.1, a real browser."""

import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tests.helpers import convlens_warm as convlens
from tests.helpers import launch_chromium, open_page, start_server
from tests.test_faces_detect import astronaut

ARTIFACTS = Path(__file__).parent / "artifacts"


def _digit_folder(root: Path, per_class: int, classes=range(10), size: int = 16) -> dict:
    """Digits as PNGs in class folders (one "person" or class each); the last image of each held
    out under root/probes. Returns {class name: probe path}."""
    digits = load_digits()
    probes = {}
    for c in classes:
        idx = np.flatnonzero(digits.target == c)[: per_class + 1]
        for n, i in enumerate(idx):
            img = Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8))
            last = n == len(idx) - 1
            path = root / ("probes" if last else f"train/person{c}") / f"person{c}_{n:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.resize((size, size)).save(path)
            if last:
                probes[f"person{c}"] = path
    return probes


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-faces")
    probes = _digit_folder(root, per_class=80, classes=range(5))
    run = root / "run"
    out = convlens("train", "--task", "embed", "--data", root / "train", "--epochs", 4,
                   "--embedding-size", 16, "--batch-size", 64, "--lr", 0.02, "--threads", 1,
                   "--run", run)  # fmt: skip
    assert out.returncode == 0, out.stderr
    proc, url = start_server(run)
    yield {"run": run, "url": url, "probes": probes, "root": root}
    proc.terminate()
    proc.wait(timeout=10)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_verify_answers_like_the_cli(faces):
    url, p = faces["url"], faces["probes"]
    info = httpx.get(f"{url}/model").json()
    assert info["task"] == "embed" and info["verify"] and 0 < info["threshold"] < 1
    for a, b in [("person1", "person1"), ("person1", "person3")]:
        first = p[a]
        second = first if a == b else p[b]
        files = {"file1": first.read_bytes(), "file2": second.read_bytes()}
        r = httpx.post(f"{url}/verify", files=files, data={"detect": "false"})
        assert r.status_code == 200, r.text
        out = convlens("verify", faces["run"], first, second, "--no-detect", "--json")
        cli = json.loads(out.stdout)
        assert r.json()["verified"] == cli["verified"]
        assert abs(r.json()["similarity"] - cli["similarity"]) < 1e-5
    named = httpx.post(f"{url}/predict", files={"file": p["person2"].read_bytes()})
    assert named.status_code == 200 and named.json()["predictions"]  # nearest training identity


def test_verify_finds_faces_and_refuses_photos_without_one(faces):
    url = faces["url"]
    photo = _png(astronaut())
    r = httpx.post(f"{url}/verify", files={"file1": photo, "file2": photo})
    assert r.status_code == 200, r.text
    box = r.json()["faces"]["file1"]["box"]  # [x, y, w, h] around the face, not the whole photo
    assert r.json()["detection"] and 150 < box[0] < 260 and box[2] < 200
    assert r.json()["similarity"] > 0.999  # the same photo twice
    blank = _png(Image.new("RGB", (200, 200), (128, 128, 128)))
    r = httpx.post(
        f"{url}/verify", files={"file1": ("me.png", photo), "file2": ("wall.png", blank)}
    )
    assert r.status_code == 422 and "wall.png" in r.json()["error"], r.text
    assert "no face" in r.json()["error"]
    r = httpx.post(f"{url}/verify", files={"file1": photo})
    assert r.status_code == 400 and "file2" in r.json()["error"]
    assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_verify_form_in_a_real_browser(faces):
    from playwright.sync_api import sync_playwright

    p = faces["probes"]
    same = p["person0"].read_bytes()
    api = httpx.post(f"{faces['url']}/verify", data={"detect": "false"},
                     files={"file1": same, "file2": same})  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page, errors = open_page(browser, faces["url"] + "/", height=800)
        page.wait_for_selector("#verify-card:not([hidden])")
        page.set_input_files("#file1", str(p["person0"]))
        page.set_input_files("#file2", str(p["person0"]))
        page.uncheck("#detect")
        page.click("#verify")
        page.wait_for_selector("#verdict .verdict")
        said = page.locator("#verdict .verdict").text_content()
        page.screenshot(path=str(ARTIFACTS / "serve_verify.png"), full_page=True)
        browser.close()
    assert said == ("Same person" if api.json()["verified"] else "Different people")
    assert not errors, errors


@pytest.fixture(scope="module")
def anomaly(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-anomaly")
    probes = _digit_folder(root, per_class=0, classes=(0, 5), size=8)  # one image of each
    run = root / "run"
    out = convlens("train", "--data", "digits", "--task", "anomaly", "--normal", "0",
                   "--anomaly-method", "mahalanobis", "--epochs", 30, "--batch-size", 32,
                   "--lr", 0.3, "--ema", 0, "--threads", 1, "--run", run)  # fmt: skip
    assert out.returncode == 0, out.stderr
    proc, url = start_server(run)
    yield {"run": run, "url": url, "probes": probes}
    proc.terminate()
    proc.wait(timeout=10)


def test_an_anomaly_run_answers_with_a_score_and_a_flag_like_the_cli(anomaly):
    url = anomaly["url"]
    info = httpx.get(f"{url}/model").json()
    assert info["task"] == "anomaly" and not info["verify"] and not info["heatmap"]
    for name, path in anomaly["probes"].items():
        r = httpx.post(f"{url}/predict", files={"file": path.read_bytes()})
        assert r.status_code == 200, r.text
        cli = json.loads(convlens("predict", anomaly["run"], path, "--json").stdout)[0]
        assert 0.0 <= r.json()["score"] <= 1.0, name
        assert abs(r.json()["score"] - cli["score"]) < 1e-5
        assert r.json()["anomaly"] == cli["anomaly"] and r.json()["threshold"] == cli["threshold"]
    junk = httpx.post(f"{url}/predict", files={"file": ("x.png", b"not an image")})
    assert junk.status_code == 422 and "x.png" in junk.json()["error"]


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_anomaly_page_in_a_real_browser(anomaly):
    from playwright.sync_api import sync_playwright

    path = anomaly["probes"]["person5"]
    api = httpx.post(f"{anomaly['url']}/predict", files={"file": path.read_bytes()}).json()
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page, errors = open_page(browser, anomaly["url"] + "/", height=600)
        page.wait_for_function("document.getElementById('about').textContent.includes('anomaly')")
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#bars .verdict")
        said = page.locator("#bars .verdict").text_content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve_anomaly.png"), full_page=True)
        browser.close()
    assert said == ("Anomalous" if api["anomaly"] else "Normal")
    assert not errors, errors
