"""Property-based fuzzing of the weights, ONNX and gallery loaders: valid files, mutated.

Whatever the bytes, the public loaders (`convlens.load` on both engines and on .onnx files,
`OnnxModel`, `load_gallery`) either load or raise a ConvlensError subclass, with the process's
peak memory bounded. CONVLENS_FUZZ_EXAMPLES sets the examples per category (default 120).
"""

import json
import os
import struct
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

import convlens
from convlens.errors import ConvlensError
from convlens.models import create_model
from tests.helpers import peak_rss_mb, reset_peak_rss

EXAMPLES = int(os.environ.get("CONVLENS_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])  # fmt: skip
MEMORY_MB = 1500  # peak RSS growth allowed over a whole category (torch alone is ~400)
OUTCOMES: Counter = Counter()  # (category, "loaded" | "refused"), printed at the end

META = {"format": 1, "task": "classify", "classes": ["a", "b", "c"], "outputs": 3,
        "input": {"channels": 1, "height": 8, "width": 8},
        "normalize": {"mean": [0.5], "std": [0.25]}, "tta": "flip-shift",
        "model": {"name": "lenet5", "args": {}}, "data": "digits",
        "versions": {"convlens": "0.2.0", "torch": "2"}}  # fmt: skip
EMBED = {**META, "task": "embed", "input": {"channels": 1, "height": 16, "width": 16},
         "outputs": 8, "identities": 3, "embedding_size": 8, "threshold": 0.5, "scale": 30.0,
         "tta": "none"}  # fmt: skip

# JSON values a mutation puts anywhere: wrong types, huge and non-finite numbers, deep nesting.
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**63, 10**6, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


# A model spec the registry may know, with its real keyword names given odd values.
MODEL_NAMES = ["lenet5", "mlp", "textbook", "fastnet", "resnet8", "wrn", "tv-resnet18", "nope", ""]
MODEL_ARGS = ["widths", "hidden", "dropout", "kernel_size", "pools", "depth", "width", "blocks"]
MODELS = st.fixed_dictionaries(
    {"name": st.sampled_from(MODEL_NAMES),
     "args": st.dictionaries(st.sampled_from(MODEL_ARGS), VALUES, max_size=2)}
)  # fmt: skip


def paths(tree, prefix=()):
    """Every key path into nested dicts and lists."""
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from paths(v, (*prefix, i))


def mutate(data, tree):
    """`tree` (a copy) with a few fields deleted, replaced or added (hypothesis draws which)."""
    tree = json.loads(json.dumps(tree))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        spots = [p for p in paths(tree) if p]
        if not spots or not isinstance(tree, dict):
            return data.draw(VALUES, label="whole")
        path = data.draw(st.sampled_from(spots), label="path")
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["delete", "replace", "add"]), label="action")
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = data.draw(VALUES, label="value")
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=12), label="key")] = data.draw(VALUES)
    return tree


def encode(data, meta) -> str:
    """The metadata as JSON text, sometimes truncated or replaced by text that is not JSON."""
    text = json.dumps(meta)  # NaN and Infinity as Python writes them
    how = data.draw(st.sampled_from(["json"] * 6 + ["truncated", "garbage", "nested"]))
    if how == "truncated":
        return text[: data.draw(st.integers(0, len(text)))]
    if how == "garbage":
        return data.draw(st.text(max_size=60))
    if how == "nested":
        return "[" * data.draw(st.integers(1, 200_000))
    return text


def lenet_tensors(classes=3, size=8) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=1, num_classes=classes, image_size=(size, size))
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def safetensors_bytes(tensors, meta_text: str) -> bytes:
    return save(tensors, metadata={"convlens": meta_text})


def mangle_bytes(data, raw: bytes) -> bytes:
    """Byte-level damage to a safetensors file: truncation, flips, a rewritten header."""
    how = data.draw(st.sampled_from(["truncate", "flip", "length", "header", "tensor"]))
    if how == "truncate":
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if how == "flip":
        out = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(out) - 1))
            out[i] = data.draw(st.integers(0, 255))
        return bytes(out)
    if how == "length":
        value = data.draw(st.sampled_from([0, 1, 2**31, 2**63, len(raw), len(raw) - 8]))
        return struct.pack("<Q", value % 2**64) + raw[8:]
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    if how == "header":  # dtype, shape and offsets of the tensors themselves
        header = mutate(data, header)
    else:  # one tensor declared huge, or of another dtype
        name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        entry = header[name]
        entry[data.draw(st.sampled_from(["shape", "dtype", "data_offsets"]))] = data.draw(
            st.one_of(
                st.lists(st.integers(0, 2**40), max_size=4),
                st.sampled_from(["F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "X"]),
            )
        )
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + raw[8 + n :]


def only_convlens_errors(category: str, load, path) -> None:
    """Run `load`; count it as loaded or refused; anything but a ConvlensError naming `path`
    fails the test."""
    try:
        load()
    except ConvlensError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
        OUTCOMES[category, "refused"] += 1
    else:
        OUTCOMES[category, "loaded"] += 1


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    lines = [f"{c}: {n} {what}" for (c, what), n in sorted(OUTCOMES.items())]
    print("\nfuzz outcomes: " + "; ".join(lines))


@pytest.fixture
def memory_bound(request):
    """The process's peak RSS may grow by at most MEMORY_MB over the test."""
    before = reset_peak_rss()
    yield
    grown = peak_rss_mb() - before
    OUTCOMES[request.node.name, "MB peak growth"] = round(grown)
    assert grown < MEMORY_MB, f"peak memory grew by {grown:.0f} MB"


IMAGE = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)


def load_and_predict(path, engine):
    rec = convlens.load(path, engine=engine)
    if rec.meta.get("task", "classify") == "classify":  # a model that loads also predicts
        rec.predict(IMAGE)


@FUZZ
@given(data=st.data())
def test_mutated_weights_metadata_loads_or_is_one_convlens_error(tmp_path, memory_bound, data):
    tensors = lenet_tensors()
    meta = mutate(data, META) if data.draw(st.booleans(), label="mutate meta") else META
    if isinstance(meta, dict) and data.draw(st.integers(0, 3), label="another model") == 0:
        meta = {**meta, "model": data.draw(MODELS, label="model")}
    raw = safetensors_bytes(tensors, encode(data, meta))
    path = tmp_path / "w.safetensors"
    path.write_bytes(raw)
    engine = data.draw(st.sampled_from(["torch", "numpy"]), label="engine")
    only_convlens_errors("weights metadata", lambda: load_and_predict(path, engine), path)


@FUZZ
@given(data=st.data())
def test_mangled_safetensors_bytes_load_or_are_one_convlens_error(tmp_path, memory_bound, data):
    raw = mangle_bytes(data, safetensors_bytes(lenet_tensors(), json.dumps(META)))
    path = tmp_path / "w.safetensors"
    path.write_bytes(raw)
    engine = data.draw(st.sampled_from(["torch", "numpy"]), label="engine")
    only_convlens_errors("safetensors bytes", lambda: load_and_predict(path, engine), path)


# --- ONNX ----------------------------------------------------------------------------------


def onnx_bytes(meta_text: str, out_width: int = 3, side: int = 8) -> bytes:
    """A tiny valid ONNX classifier (flatten -> matmul) for 1 x side x side images."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((side * side, out_width), 0.01, np.float32), "w")
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, side * side])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", out_width])],
        initializer=[w, shape],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "convlens", meta_text
    return model.SerializeToString()


def test_the_tiny_onnx_graph_loads_and_predicts(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_bytes(json.dumps(META)))
    rec = convlens.load(path)
    assert [p["label"] for p in rec.predict(IMAGE, top_k=3)] != []


@FUZZ
@given(data=st.data())
def test_mutated_onnx_metadata_loads_or_is_one_convlens_error(tmp_path, memory_bound, data):
    meta = mutate(data, META) if data.draw(st.booleans(), label="mutate meta") else META
    width = data.draw(st.sampled_from([3, 3, 3, 2, 10]), label="graph outputs")
    side = data.draw(st.sampled_from([8, 8, 8, 9]), label="graph side")
    raw = onnx_bytes(encode(data, meta), width, side)
    if data.draw(st.integers(0, 9), label="damage bytes") == 0:
        cut = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:cut]
    path = tmp_path / "m.onnx"
    path.write_bytes(raw)
    only_convlens_errors("onnx metadata", lambda: load_and_predict(path, "torch"), path)


# --- galleries -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """An untrained embed run (8-d embeddings of 1x16x16 images) and its face recogniser."""
    from convlens.faces.embed import EmbedTask
    from convlens.faces.recogniser import FaceRecogniser
    from convlens.runs.weights import save_weights

    root = tmp_path_factory.mktemp("faces")
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=1, num_classes=8, image_size=(16, 16))
    save_weights(root / "w.safetensors", EmbedTask.wrap(model, EMBED).state_dict(), EMBED)
    return FaceRecogniser(root / "w.safetensors", detect=False)


ARRAYS = st.one_of(
    st.builds(lambda shape, dt: np.zeros(shape, dt),
              st.lists(st.integers(0, 9), max_size=3).map(tuple),
              st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_,
                               "U4", "S4"])),
    st.sampled_from([np.array("x"), np.array(["ann", "bob", "cy"]), np.full((2, 8), np.nan),
                     np.ones((2, 8), np.float32), np.ones((3, 8), np.float32)]),
)  # fmt: skip


@FUZZ
@given(data=st.data())
def test_mutated_galleries_load_or_are_one_convlens_error(faces, tmp_path, memory_bound, data):
    import io
    import zipfile

    from convlens.faces.gallery import load_gallery

    arrays = {"embeddings": np.eye(2, 8, dtype=np.float32), "names": np.array(["ann", "bob"]),
              "files": np.array(["a.png", "b.png"]), "model": np.array(faces.model_id)}  # fmt: skip
    for _ in range(data.draw(st.integers(0, 3), label="array mutations")):
        key = data.draw(st.sampled_from(["embeddings", "names", "files", "model", "extra"]))
        if key in arrays and data.draw(st.booleans(), label="delete"):
            del arrays[key]
        else:
            arrays[key] = data.draw(ARRAYS, label="array")
    buf = io.BytesIO()
    compressed = data.draw(st.booleans(), label="compressed")
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    raw = buf.getvalue()
    how = data.draw(st.sampled_from(["none"] * 4 + ["truncate", "flip", "not-zip"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        out = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 6))):
            out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
        raw = bytes(out)
    elif how == "not-zip":
        raw = data.draw(st.binary(max_size=200))
    path = tmp_path / "g.npz"
    path.write_bytes(raw)
    assert zipfile.is_zipfile(io.BytesIO(raw)) or how != "none"
    only_convlens_errors("gallery", lambda: load_gallery(path, faces), path)
