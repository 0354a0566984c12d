import json
import os

import pytest
import torch
from safetensors.torch import save_file

from convlens.errors import ConvlensError, ModelError
from convlens.runs import weights as ckpt
from convlens.runs.atomic import atomic_write_bytes
from convlens.runs.folder import resolve_weights
from convlens.training.optim import flatten_optimizer, unflatten_optimizer


def test_weights_round_trip_with_metadata(tmp_path):
    sd = {"conv.weight": torch.randn(4, 1, 3, 3), "fc.bias": torch.zeros(10)}
    meta = {"model": {"name": "x", "args": {}}, "classes": ["a", "b"],
            "input": {"channels": 1, "height": 3, "width": 3},
            "normalize": {"mean": [0.5], "std": [0.25]}}  # fmt: skip
    ckpt.save_weights(tmp_path / "w.safetensors", sd, meta)
    tensors, got = ckpt.load_weights(tmp_path / "w.safetensors")
    assert got["classes"] == ["a", "b"] and got["format"] == ckpt.FORMAT_VERSION
    assert torch.equal(tensors["conv.weight"], sd["conv.weight"])
    raw = (tmp_path / "w.safetensors").read_bytes()
    assert b"pickle" not in raw and not raw.startswith(b"\x80")  # not a pickle stream


def test_foreign_and_corrupt_files_are_refused(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ModelError, match="not a convlens model"):
        ckpt.load_weights(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(300))
    with pytest.raises(ModelError, match="junk.safetensors"):
        ckpt.load_weights(tmp_path / "junk.safetensors")
    torch_pickle = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(2)}, torch_pickle)
    with pytest.raises(ModelError, match="model.pt"):
        ckpt.load_weights(torch_pickle)
    with pytest.raises(ModelError, match="no such run"):
        resolve_weights(tmp_path / "missing")


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.safetensors"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]  # write fails
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]  # no temp file left


def test_full_disk_gives_clear_error_and_keeps_old_file(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=64k tmpfs {mnt} 2>/dev/null"):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        atomic_write_bytes(mnt / "w.bin", b"old")
        with pytest.raises(ConvlensError, match="No space left"):
            atomic_write_bytes(mnt / "w.bin", b"x" * 200_000)
        assert (mnt / "w.bin").read_bytes() == b"old"
        assert [p.name for p in mnt.iterdir()] == ["w.bin"]
    finally:
        os.system(f"umount {mnt}")


def test_optimizer_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    for opt in (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        torch.optim.AdamW(model.parameters(), lr=0.1),
    ):
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
        tensors, info = flatten_optimizer(opt)
        ckpt.save_state(tmp_path / "s.safetensors", tensors, {"optimizer": info})
        t2, i2 = ckpt.load_state(tmp_path / "s.safetensors")
        rebuilt = unflatten_optimizer(t2, json.loads(json.dumps(i2["optimizer"])))
        want = opt.state_dict()
        assert rebuilt["param_groups"] == json.loads(json.dumps(want["param_groups"]))
        for idx, entry in want["state"].items():
            for k, v in entry.items():
                assert torch.equal(torch.as_tensor(rebuilt["state"][idx][k]), torch.as_tensor(v))
