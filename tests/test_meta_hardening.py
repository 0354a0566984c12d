"""Crafted weights, ONNX and gallery files: one line naming the file and the field, nothing read,
written or downloaded because a file says so, no allocation a file declares."""

import json
import os
import socket
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import convlens
from convlens.config import TrainConfig, save_config
from convlens.errors import ConvlensError, ModelError
from convlens.models import create_model
from convlens.runs.weights import load_state, load_weights, save_state, save_weights
from tests.helpers import PEAK_RSS_CODE, start_server
from tests.helpers import convlens_warm as cli

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
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        """Count a connection that asks the proxy for something: a stray connect from another
        test reusing a freed port (a busy CI machine) is not a download."""
        conn.settimeout(10)
        try:
            head = conn.recv(16)
        except OSError:
            head = b""
        finally:
            conn.close()
        if head.split(b" ", 1)[0] in (b"CONNECT", b"GET", b"HEAD", b"POST"):
            self.connections += 1

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


def test_evaluate_and_explain_read_no_folder_a_loose_weights_file_names(tmp_path):
    victim = image_folder(tmp_path / "victim")
    before = snapshot(victim)
    w = weights(tmp_path / "loose.safetensors", {"data": str(victim)})
    for command in ("evaluate", "explain"):
        result = cli(command, w)
        assert result.returncode == 1
        assert result.stderr.strip().endswith("a weights file outside its run folder: pass --data")
    assert snapshot(victim) == before and not (victim / ".convlens-cache").exists()


SIDE_FILES = {  # (meta, side file, contents, the one-line error's end)
    "threshold-not-json": ({"classes": ["a", "b"]}, "threshold.json", "{", "not valid JSON"),
    "threshold-no-class": ({"classes": ["a", "b"]}, "threshold.json", '{"threshold": 0.5}',
                           "'positive_class' must be one of a, b, not None"),
    "threshold-string": ({"classes": ["a", "b"]}, "threshold.json",
                         '{"positive_class": "b", "threshold": "x"}', "'threshold' must be"),
    "thresholds-short": ({"task": "multilabel"}, "thresholds.json", '{"thresholds": [0.5]}',
                         "'thresholds' holds 1 values for 3 labels"),
    "thresholds-list": ({"task": "multilabel"}, "thresholds.json", "[1, 2, 3]",
                        "must be a JSON object"),
}  # fmt: skip


@pytest.mark.parametrize("case", SIDE_FILES)
def test_crafted_decision_files_beside_the_weights_are_one_line(tmp_path, case):
    meta, name, text, message = SIDE_FILES[case]
    w = weights(tmp_path / "weights" / "best.safetensors", meta, classes=len(meta.get("classes",
                "abc")))  # fmt: skip
    (w.parent / name).write_text(text)
    image = image_folder(tmp_path / "images", classes=("x",), n=1) / "x" / "0.png"
    result = cli("predict", tmp_path, image)
    assert result.returncode == 1, result.stdout
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"convlens: error: {w.parent / name}: ")
    assert line.endswith(message) or message in line


# --- Low 1: crafted metadata is one line naming the file and the field -----------------------

CRAFTED = {
    "model-as-string": ({"model": "lenet5"}, "'model' must be an object"),
    "unknown-kwarg": ({"model": {"name": "lenet5", "args": {"bogus": 1}}}, "bogus"),
    "kwarg-of-wrong-type": ({"model": {"name": "fastnet", "args": {"widths": "abc"}}},
                            "'model.args' does not fit model 'fastnet'"),
    "args-not-a-mapping": ({"model": {"name": "lenet5", "args": [1]}}, "'model.args'"),
    "unknown-model": ({"model": {"name": "nope"}}, "unknown model 'nope'"),
    "empty-input": ({"input": {}}, "'input.channels'"),
    "input-of-10^6-squared": ({"input": {"channels": 1, "height": 10**6, "width": 10**6}},
                              "'input.height' must be an integer from 1 to 8192"),
    "input-area": ({"input": {"channels": 1, "height": 8192, "width": 8192}}, "'input' declares"),
    "too-few-classes": ({"classes": ["a"], "outputs": 3}, "'outputs' is 3"),
    "no-classes": ({"classes": []}, "'classes' holds 0 names"),
    "repeated-class": ({"classes": ["a", "a", "b"]}, "repeats a name"),
    "std-zero": ({"normalize": {"mean": [0.5], "std": [0.0]}}, "'normalize.std'"),
    "mean-nan": ({"normalize": {"mean": [float("nan")], "std": [0.2]}}, "'normalize.mean'"),
    "std-per-channel-mismatch": ({"normalize": {"mean": [0.5], "std": [0.2, 0.2]}},
                                 "'normalize.std' holds 2 values for 1 channels"),
    "unknown-task": ({"task": "zzz"}, "'task' must be one of"),
    "unknown-tta": ({"tta": "rotate"}, "'tta'"),
    "versions-a-list": ({"versions": ["0.1"]}, "'versions'"),
    "embed-without-threshold": ({"task": "embed", "identities": 3, "embedding_size": 3,
                                 "scale": 30.0}, "'threshold'"),
}  # fmt: skip


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_metadata_is_a_model_error_naming_file_and_field(tmp_path, case):
    change, message = CRAFTED[case]
    w = weights(tmp_path / f"{case}.safetensors", change)
    for engine in ("torch", "numpy"):
        if engine == "numpy" and "fastnet" in json.dumps(change):
            continue  # the NumPy engine has no fastnet
        with pytest.raises(ModelError) as err:
            convlens.load(w, engine=engine)
        assert str(w) in str(err.value) and message in str(err.value), (engine, err.value)


def test_crafted_metadata_on_the_command_line_is_one_line(tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    for case in ("kwarg-of-wrong-type",):
        w = weights(tmp_path / f"{case}.safetensors", CRAFTED[case][0])
        out = cli("predict", w, png)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.count("\n") == 1 and str(w) in out.stderr, out.stderr


def test_nan_weights_are_refused_at_load(tmp_path):
    model = create_model("lenet5", in_channels=1, num_classes=3, image_size=(8, 8))
    sd = model.state_dict()
    sd["classifier.fc3.bias"][1] = float("inf")
    w = weights(tmp_path / "nan.safetensors", tensors=sd)
    for engine in ("torch", "numpy"):
        with pytest.raises(ModelError, match="NaN or infinite values.*classifier.fc3.bias"):
            convlens.load(w, engine=engine)


def _child(script: str, *args) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter (its own imports and peak RSS); it must succeed."""
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out


def test_a_huge_declared_model_is_refused_before_anything_is_allocated(tmp_path):
    # An MLP over 4x4096x4096 inputs would hold 17e9 parameters (68 GB): the file holds 8x8's.
    mlp = create_model("mlp", in_channels=1, num_classes=3, image_size=(8, 8))
    huge = {"input": {"channels": 4, "height": 4096, "width": 4096}, "model": {"name": "mlp"}}
    w = weights(tmp_path / "huge.safetensors", huge, tensors=mlp.state_dict())
    script = PEAK_RSS_CODE + (
        "import sys, convlens\n"
        "from convlens.errors import ModelError\n"
        "for engine in ('torch', 'numpy'):\n"
        "    try:\n"
        "        convlens.load(sys.argv[1], engine=engine)\n"
        "    except ModelError as e:\n"
        "        print(e)\n"
        "print(peak_rss_mb())\n"
    )
    out = _child(script, w)
    *errors, peak_kb = out.stdout.strip().splitlines()
    assert len(errors) == 2 and all("weights do not fit model 'mlp'" in e for e in errors)
    assert float(peak_kb) < 1000  # MB: under 1 GB (torch itself takes about 0.4)


def test_predicting_loads_neither_torchvision_nor_scikit_learn(tmp_path):
    # Each costs start-up time and resident memory that a prediction does not need.
    w = weights(tmp_path / "w.safetensors")
    script = (
        "import sys, numpy as np, convlens\n"
        "answer = convlens.load(sys.argv[1]).predict(np.zeros((8, 8), np.uint8), top_k=2)\n"
        "heavy = ('torchvision', 'sklearn', 'scipy', 'pandas', 'matplotlib')\n"
        "print(len(answer), [m for m in heavy if m in sys.modules])\n"
    )
    out = _child(script, w)
    assert out.stdout.split() == ["2", "[]"]


def test_resuming_from_another_models_state_is_one_line(tmp_path):
    run = tmp_path / "run"
    out = cli("train", "--data", "digits", "--model", "lenet5", "--epochs", 1, "--batch-size", 512,
              "--threads", 1, "--run", run)  # fmt: skip
    assert out.returncode == 0, out.stderr
    state = run / "state" / "last.safetensors"
    tensors, info = load_state(state)
    other = create_model("mlp", in_channels=1, num_classes=10, image_size=(8, 8)).state_dict()
    tensors = {k: v for k, v in tensors.items() if not k.startswith(("model.", "ema."))}
    tensors |= {f"model.{k}": v for k, v in other.items()}
    save_state(state, tensors, info)
    out = cli("train", "--resume", "--run", run)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert f"{state}: this state does not fit the run's model" in out.stderr


# --- ONNX metadata -----------------------------------------------------------------------


def rewrite_onnx_meta(src, dst, value: str):
    """A copy of the ONNX file `src` whose convlens metadata string is `value`."""
    import onnx

    proto = onnx.load(src)
    for entry in proto.metadata_props:
        if entry.key == "convlens":
            entry.value = value
    onnx.save(proto, dst)
    return dst


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "convlens metadata is not valid JSON"),
        ("[" * 100_000, "convlens metadata is not valid JSON"),
        (json.dumps("a string"), "must be a JSON object"),
        (json.dumps({**META, "normalize": {"mean": [0.5], "std": [0]}}), "'normalize.std'"),
        (json.dumps({**META, "classes": ["a", "b"]}), "the graph's output is [10] per image"),
        (json.dumps({**META, "input": {"channels": 1, "height": 9, "width": 8}}),
         "the graph's input is [1, 8, 8] per image"),
        (json.dumps({**META, "thresholds": [0.5]}), "'thresholds' holds 1 values for 3 labels"),
        (json.dumps({**META, "classes": list("0123456789")}), None),  # as exported: loads
    ],
)  # fmt: skip
def test_crafted_onnx_metadata_is_one_model_error(own_run, tmp_path, value, message):
    from convlens.export import OnnxModel

    bad = rewrite_onnx_meta(own_run["onnx"], tmp_path / "bad.onnx", value)
    if message is None:
        assert OnnxModel(bad).predict_proba(np.zeros((2, 1, 8, 8), np.uint8)).shape == (2, 10)
        return
    with pytest.raises(ModelError) as err:
        OnnxModel(bad)
    assert str(bad) in str(err.value) and message in str(err.value), err.value
    with pytest.raises(ModelError):
        convlens.load(bad)


# --- galleries ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """An untrained embed run's weights (8-d embeddings of 1x16x16 images) and its recogniser."""
    from convlens.faces.embed import EmbedTask
    from convlens.faces.recogniser import FaceRecogniser

    root = tmp_path_factory.mktemp("faces")
    meta = {**META, "task": "embed", "input": {"channels": 1, "height": 16, "width": 16},
            "outputs": 8, "identities": 3, "embedding_size": 8, "threshold": 0.5, "scale": 30.0,
            "margin": 0.5, "embed_loss": "arcface"}  # fmt: skip
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=1, num_classes=8, image_size=(16, 16))
    save_weights(root / "w.safetensors", EmbedTask.wrap(model, meta).state_dict(), meta)
    return FaceRecogniser(root / "w.safetensors", detect=False)


def gallery(path, rec, **arrays):
    """A gallery .npz as enroll writes it (two people), with `arrays` replacing its own."""
    emb = np.eye(2, 8, dtype=np.float32)
    own = {"embeddings": emb, "names": np.array(["ann", "bob"]),
           "files": np.array(["a.png", "b.png"]), "model": np.array(rec.model_id)}  # fmt: skip
    np.savez(path, **{**own, **arrays})
    return path


def test_a_well_formed_gallery_loads(faces, tmp_path):
    from convlens.faces.gallery import load_gallery

    emb, names = load_gallery(gallery(tmp_path / "g.npz", faces), faces)
    assert emb.shape == (2, 8) and names.tolist() == ["ann", "bob"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"embeddings": np.ones((2, 5), np.float32)}, "gallery embeddings are float32 (2, 5)"),
        ({"embeddings": np.ones(8, np.float32)}, "gallery embeddings are float32 (8,)"),
        ({"embeddings": np.zeros((0, 8), np.float32)}, "gallery embeddings are float32 (0, 8)"),
        ({"embeddings": np.full((2, 8), np.nan, np.float32)}, "NaN or infinite"),
        ({"embeddings": np.ones((2, 8), np.int64)}, "int64"),
        ({"names": np.array(["ann"])}, "gallery names are <U3 (1,)"),
        ({"names": np.array([1, 2])}, "gallery names are int64"),
        ({"model": np.array([1.0, 2.0])}, "gallery 'model' must be one string"),
        ({"model": np.array("x\n" * 10_000)}, "enrolled with model x x x"),
    ],
)  # fmt: skip
def test_a_crafted_gallery_is_one_convlens_error(faces, tmp_path, arrays, message):
    from convlens.faces.gallery import load_gallery

    path = gallery(tmp_path / "g.npz", faces, **arrays)
    with pytest.raises(ConvlensError) as err:
        load_gallery(path, faces)
    assert message in " ".join(str(err.value).split()) and len(str(err.value)) < 400, err.value


def test_a_npy_a_pickle_a_device_and_a_fifo_are_not_galleries(faces, tmp_path):
    from convlens.faces.gallery import load_gallery

    np.save(tmp_path / "g.npy", np.eye(2, 8, dtype=np.float32))
    objects = tmp_path / "objects.npz"
    np.savez(objects, embeddings=np.array([{"a": 1}], dtype=object), names=np.array(["a"]),
             model=np.array(faces.model_id))  # fmt: skip
    (tmp_path / "zero.npz").symlink_to("/dev/zero")
    for name in ("g.npy", "objects.npz", "zero.npz", "missing.npz"):
        with pytest.raises(ConvlensError, match=str(tmp_path / name)):
            load_gallery(tmp_path / name, faces)
    os.mkfifo(tmp_path / "fifo.npz")  # opened for reading, it would block until a writer comes
    png = tmp_path / "p.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(png)
    out = cli("identify", faces.weights, tmp_path / "fifo.npz", png, "--no-detect", timeout=60)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "fifo.npz: not a regular file" in out.stderr


def test_a_gallery_zip_bomb_is_refused_before_unpacking(faces, tmp_path):
    """A 300 MB array of zeros deflates to 0.3 MB: refused from the zip directory's sizes."""
    from convlens.faces.gallery import MAX_GALLERY_BYTES, load_gallery

    path = gallery(tmp_path / "g.npz", faces)
    n = MAX_GALLERY_BYTES // 4 + 1024  # float32 values
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        f = z.open("extra.npy", "w", force_zip64=True)
        header = {"descr": "<f4", "fortran_order": False, "shape": (n,)}
        np.lib.format.write_array_header_1_0(f, header)
        chunk = bytes(1 << 22)
        for start in range(0, 4 * n, len(chunk)):
            f.write(chunk[: 4 * n - start])
        f.close()
    assert path.stat().st_size < 2 << 20
    with pytest.raises(ConvlensError, match="gallery unpacks to"):
        load_gallery(path, faces)


def test_metadata_task_names_are_the_training_tasks():
    from convlens.runs.checks import TTA_MODES
    from convlens.runs.checks import TTA_MODES as INFER_TTA  # the one list models.infer follows
    from convlens.tasks import list_tasks
    from convlens.tasks.registry import BUILTIN as TASKS  # the torch-free table of names

    TRAINING_TASKS = list_tasks()

    assert set(TASKS) == set(TRAINING_TASKS) and TTA_MODES == INFER_TTA


def test_weights_round_trip_through_validation(tmp_path):
    w = weights(tmp_path / "w.safetensors")
    _, meta = load_weights(w)
    assert meta["classes"] == META["classes"]
