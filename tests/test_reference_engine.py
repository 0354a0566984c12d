"""The NumPy engine as a whole: loads convlens weights without torch, trains like the torch
engine (float64: equal weights after an epoch; float32: equal test accuracy), predicts alike."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import convlens
from convlens import reference
from convlens.cli import main
from convlens.config import make_config
from convlens.data.batches import normalize
from convlens.models import create_model
from convlens.predict import load
from convlens.runs import weights as ckpt
from convlens.runs.folder import resolve_weights
from convlens.training.build import build_model
from convlens.training.data import load_data
from convlens.training.lifecycle import epoch_batches, epoch_steps
from convlens.training.numpy_loop import build_sgd, train_step
from convlens.training.optim import build_optimizer, get_lr, set_lr
from convlens.training.progress import Progress

ENGINES = ("torch", "numpy")
DIGITS = [
    "--data",
    "digits",
    "--model",
    "textbook",
    "--epochs",
    "8",
    "--batch-size",
    "32",
    "--lr",
    "0.05",
    "--amp",
    "off",
]


def rel_err(ours: np.ndarray, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().numpy()
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def twins(name: str, c: int, h: int, w: int, k: int, **args):
    """A torch model and the NumPy model holding the same float64 weights."""
    torch.manual_seed(0)
    size = {"in_channels": c, "num_classes": k, "image_size": (h, w)}
    model = create_model(name, **size, **args).double()
    ours = reference.build_model(name, **size, dtype=np.float64, **args)
    ours.load_state_dict({n: t.numpy() for n, t in model.state_dict().items()})
    return model, ours


@pytest.mark.parametrize("config", [(1, 28, 28, 10), (1, 8, 8, 10), (3, 25, 25, 2)])
@pytest.mark.parametrize("name", list(reference.MODELS))
def test_models_equal_torch_models(name, config):
    model, ours = twins(name, *config)
    assert list(ours.state_dict()) == list(model.state_dict())  # torch's names, same order
    x = np.random.default_rng(0).standard_normal((4, *config[:3]))
    y = np.arange(4) % config[3]
    logits = ours(x)
    loss_fn = reference.CrossEntropyLoss(0.1)
    loss_fn(logits, y)
    ours.zero_grad()
    dx = ours.backward(loss_fn.backward(), input_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    lt = model(xt)
    F.cross_entropy(lt, torch.tensor(y), label_smoothing=0.1).backward()
    assert rel_err(logits, lt) < 1e-10
    assert rel_err(dx, xt.grad) < 1e-10
    for pname, p in ours.named_parameters().items():
        assert rel_err(p.grad, dict(model.named_parameters())[pname].grad) < 1e-10, pname


def test_mlp_dropout_layers_take_torch_names():
    model, ours = twins("mlp", 1, 8, 8, 10, dropout=0.3)
    assert "features.drop1" in ours.layers
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8))
    model.eval()
    assert rel_err(ours.eval()(x), model(torch.tensor(x))) < 1e-10


def test_reference_runs_with_torch_blocked(tmp_path):
    """Build, save, load, predict, gradcheck and train a step with `import torch` impossible."""
    script = textwrap.dedent("""
        import json, sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from safetensors.numpy import save_file
        import convlens.reference as R
        from convlens.reference import gradcheck

        model = R.build_model("lenet5", in_channels=1, num_classes=3, image_size=(8, 8), seed=0)
        meta = {"classes": ["a", "b", "c"], "input": {"channels": 1, "height": 8, "width": 8},
                "normalize": {"mean": [0.5], "std": [0.25]}, "tta": "flip-shift",
                "model": {"name": "lenet5", "args": {}}}
        path = sys.argv[1]
        save_file(model.state_dict(), path, metadata={"convlens": json.dumps(meta)})
        loaded, meta = R.load_model(path)
        images = np.random.default_rng(0).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
        p = loaded.predict_proba(images, **meta["normalize"], tta="flip-shift")
        assert p.shape == (5, 3) and np.allclose(p.sum(1), 1)
        assert np.array_equal(p, model.predict_proba(images, [0.5], [0.25], tta="flip-shift"))
        assert all(row["ok"] for row in gradcheck.run_all())
        loaded.train()
        opt = R.SGD(loaded.parameters(), lr=0.1, momentum=0.9)
        loss_fn = R.CrossEntropyLoss()
        x = R.normalize(images, [0.5], [0.25])
        loss_fn(loaded(x), np.arange(5) % 3)
        loaded.backward(loss_fn.backward())
        opt.step()
        assert [m for m in sys.modules if m.startswith("torch")] == ["torch"]
        print("ok")
    """)
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "w.safetensors")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_one_float64_epoch_ends_with_the_same_weights():
    """textbook on digits, same initial weights, same batches (translate 2), both engines."""
    cfg = make_config(
        None,
        {
            "data": "digits",
            "model": "textbook",
            "epochs": 1,
            "batch_size": 32,
            "lr": 0.05,
            "amp": "off",
        },
    )
    log = Progress(live=False)
    ds, mean, std, hflip = load_data(cfg, log)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ds, log, [0.0], [1.0]).double()
    ours = reference.build_model(
        cfg.model, in_channels=1, num_classes=10, image_size=(8, 8), dtype=np.float64
    )
    ours.load_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
    opt, our_opt = build_optimizer(model, cfg), build_sgd(ours, cfg)
    loss_fn = reference.CrossEntropyLoss(cfg.label_smoothing)
    drop_last, steps_per_epoch, total = epoch_steps(cfg, len(ds.train))
    steps = 0
    for i, (xb, yb) in enumerate(epoch_batches(cfg, ds, 0, hflip, drop_last)):
        lr = get_lr(i, total, steps_per_epoch, cfg)
        set_lr(opt, lr)
        set_lr(our_opt, lr)
        x = normalize(xb, mean, std).double()  # (B, 1, 8, 8)
        loss = F.cross_entropy(model(x), yb, label_smoothing=cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        our_loss = train_step(ours, our_opt, loss_fn, x.numpy(), yb.numpy())
        assert abs(our_loss - loss.item()) <= 1e-8 * loss.item()
        steps += 1
    assert steps == len(ds.train) // 32
    torch_weights = model.state_dict()
    for name, w in ours.state_dict().items():
        assert not np.array_equal(w, 0) and rel_err(w, torch_weights[name]) < 1e-8, name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same `convlens train` on digits, in float32, by each engine."""
    root = tmp_path_factory.mktemp("engines")
    for engine in ENGINES:
        assert main(["train", *DIGITS, "--engine", engine, "--run", str(root / engine)]) == 0
    return root


def test_float32_training_reaches_the_same_test_accuracy(runs):
    acc = {e: json.loads((runs / e / "metrics.json").read_text())["accuracy"] for e in ENGINES}
    assert acc["torch"] >= 0.9
    assert abs(acc["numpy"] - acc["torch"]) <= 0.005
    assert "engine: numpy" in (runs / "numpy" / "config.yaml").read_text()
    header = (runs / "numpy" / "results.csv").read_text().splitlines()[0]
    assert header == (runs / "torch" / "results.csv").read_text().splitlines()[0]
    assert len((runs / "numpy" / "results.csv").read_text().splitlines()) == 9


def test_predict_numpy_equals_torch_probabilities(runs, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(10):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((digits.images[-1 - i] * 255 / 16).astype(np.uint8)).save(path)
        paths.append(str(path))
    tensors, meta = ckpt.load_weights(resolve_weights(runs / "numpy"))
    mirrored = tmp_path / "mirror.safetensors"  # the same weights, predicting with 6-view TTA
    ckpt.save_weights(mirrored, tensors, {**meta, "tta": "flip-shift"})
    probs = {}  # (run, engine) -> rows
    for run in (str(runs / "numpy"), str(mirrored)):
        for engine in ENGINES:
            probs[run, engine] = load(run, engine=engine).predict_files(paths, top_k=10)
        for ours, theirs in zip(probs[run, "numpy"], probs[run, "torch"], strict=True):
            assert ours["file"] == theirs["file"]
            assert ours["predictions"][0]["index"] == theirs["predictions"][0]["index"]
            score = {p["index"]: p["score"] for p in theirs["predictions"]}
            assert all(abs(p["score"] - score[p["index"]]) <= 1e-5 for p in ours["predictions"])
    assert probs[str(mirrored), "torch"] != probs[str(runs / "numpy"), "torch"]  # TTA did act

    capsys.readouterr()
    assert main(["predict", str(runs / "numpy"), *paths[:2], "--engine", "numpy", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in printed] == paths[:2]
    torch_rows = probs[str(runs / "numpy"), "torch"]
    assert printed[0]["predictions"][0]["score"] == pytest.approx(
        torch_rows[0]["predictions"][0]["score"], abs=1e-5
    )


def test_numpy_engine_names_what_it_cannot_do(tmp_path):
    from convlens.errors import ConfigError, ModelError

    with pytest.raises(ConfigError, match="has the models textbook, lenet5, mlp; not 'fastnet'"):
        convlens.train(data="digits", model="fastnet", engine="numpy", run=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="does not support optimizer=adamw, amp=bf16"):
        convlens.train(data="digits", model="mlp", engine="numpy", optimizer="adamw", amp="bf16",
                       run=str(tmp_path / "b"))  # fmt: skip
    with pytest.raises(ConfigError, match="'engine' must be one of torch, numpy"):
        make_config(None, {"engine": "jax"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    (tmp_path / "junk.safetensors").write_bytes(b"not a weights file")
    with pytest.raises(ModelError, match="junk.safetensors: not a valid safetensors file"):
        reference.load_model(tmp_path / "junk.safetensors")
    torch.manual_seed(0)
    fast = create_model("resnet8", in_channels=1, num_classes=10, image_size=(8, 8))
    meta = {
        "classes": list("0123456789"),
        "input": {"channels": 1, "height": 8, "width": 8},
        "normalize": {"mean": [0.5], "std": [0.2]},
        "model": {"name": "resnet8"},
    }
    ckpt.save_weights(tmp_path / "fast.safetensors", fast.state_dict(), meta)
    with pytest.raises(
        ModelError, match="the NumPy engine has textbook, lenet5, mlp; not .resnet8."
    ):
        load(tmp_path / "fast.safetensors", engine="numpy")
    assert main(["predict", str(tmp_path / "fast.safetensors"), __file__, "--engine", "numpy"]) == 1


def test_principles_page_points_at_code():
    import re
    from pathlib import Path

    root = Path(__file__).parent.parent
    doc = (root / "docs" / "principles.md").read_text()
    refs = re.findall(r"\]\(\.\./([\w/]+\.py)#L(\d+)-L(\d+)\)", doc)
    assert len(refs) >= 20
    for path, first, last in refs:
        lines = (root / path).read_text().splitlines()
        assert int(first) <= int(last) <= len(lines), path
        assert lines[int(first) - 1].strip() and lines[int(last) - 1].strip(), (path, first)
