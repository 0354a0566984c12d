"""A weights file is data, not instructions: nothing read, written or downloaded because its
metadata names a dataset."""

import socket
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.config import TrainConfig, save_config
from convlens.models import create_model
from convlens.training.checkpoint import save_weights
from tests.helpers import convlens as cli
from tests.helpers import start_server

pytestmark = pytest.mark.xdist_group("meta-hardening")

META = {"task": "classify", "classes": ["a", "b", "c"],
        "input": {"channels": 1, "height": 8, "width": 8},
        "normalize": {"mean": [0.5], "std": [0.25]}, "tta": "none",
        "model": {"name": "lenet5", "args": {}}}  # fmt: skip


def weights(path, meta=None, tensors=None, classes=3):
    """A lenet5 weights file for 1x8x8 images (seeded), with `meta` over the default metadata."""
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=1, num_classes=classes, image_size=(8, 8))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, tensors or model.state_dict(), {**META, **(meta or {})})
    return path


def image_folder(root, classes=("a", "b", "c"), n=4):
    """root/<class>/<i>.png, 8x8 grey."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                root / c / f"{i}.png"
            )
    return root


def snapshot(root):
    """Every path under root with its size and mtime: what a read-only visit leaves as it was."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


# --- Medium 6: a weights file is data, not instructions ------------------------------------


class ProxyTrap:
    """A TCP listener posing as the HTTP(S) proxy: counts every connection a download makes."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def env(self, home):
        proxies = {k: self.url for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
        return {**proxies, "no_proxy": "", "NO_PROXY": "", "HOME": str(home), "CONVLENS_DATA": ""}


def test_export_downloads_nothing_a_weights_file_names(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    w = weights(tmp_path / "w.safetensors", {"data": "mnist"})  # not on disk here
    trap = ProxyTrap()
    out = cli("export", w, "--format", "onnx", env=trap.env(home))
    assert out.returncode == 0, out.stderr
    assert "seeded random images" in out.stdout
    assert trap.connections == 0  # no download was even tried
    assert not (home / ".cache" / "convlens").exists()  # no ~/.cache/convlens/mnist made for it


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A run folder (config.yaml: digits) whose weights name another folder; exported once."""
    from convlens.export import export_onnx

    root = tmp_path_factory.mktemp("own")
    victim = image_folder(root / "victim")
    before = snapshot(victim)
    run = root / "run"
    run.mkdir()
    save_config(TrainConfig(data="digits", model="lenet5", run=str(run)), run / "config.yaml")
    digits = {"classes": [str(i) for i in range(10)], "data": str(victim)}
    weights(run / "weights" / "best.safetensors", digits, classes=10)
    result = export_onnx(run)
    return {"result": result, "victim": victim, "before": before, "onnx": result["onnx"]}


def test_export_in_its_own_run_folder_uses_the_config_data_not_the_weights_field(own_run):
    assert own_run["result"]["source"] == "digits validation split"
    assert own_run["result"]["images"] == 100
    assert snapshot(own_run["victim"]) == own_run["before"]


def test_serve_start_up_reads_no_folder_the_weights_name(tmp_path):
    import httpx

    victim = image_folder(tmp_path / "victim")
    before = snapshot(victim)
    w = weights(tmp_path / "weights" / "best.safetensors", {"data": str(victim)})  # no config
    proc, url = start_server(w)  # exports to ONNX (and checks parity) at start-up
    try:
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert snapshot(victim) == before  # no .convlens-cache written into it, nothing read
    assert not (victim / ".convlens-cache").exists()
