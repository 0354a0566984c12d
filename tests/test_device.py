"""The GPU path's pieces: batches cut and augmented where the data lives; torch.compile runs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import convlens
from convlens.data import Split, iterate_batches
from convlens.data.batches import to_device
from convlens.device import Caps, choose_amp
from convlens.errors import ConvlensError
from tests.helpers import convlens_warm as cli

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here"))]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_batches_are_made_on_the_data_device_with_the_same_draws(device):
    """Shuffle, flips and shifts drawn from a CPU generator give the same batches anywhere."""
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (50, 3, 9, 7), dtype=torch.uint8, generator=g),
                  torch.arange(50) % 4)  # fmt: skip
    flips = torch.rand(50, generator=g) < 0.5

    def batches(s: Split) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(1)
        return list(iterate_batches(s, 16, shuffle=True, generator=gen, translate=2, hflip=flips))

    here = batches(split)
    there = batches(to_device(split, device))
    assert len(here) == len(there) == 4
    for (x, y), (xd, yd) in zip(here, there, strict=True):
        assert xd.device.type == yd.device.type == device
        assert torch.equal(x, xd.cpu()) and torch.equal(y, yd.cpu())
    assert not torch.equal(here[0][0], split.images[:16])  # shuffled and augmented


def test_compile_trains_the_same_model_and_saves_plain_names(tmp_path):
    """--compile: the same weights as eager (to float tolerance), loadable without _orig_mod."""
    # About 25 s on this 2-core machine (inductor compiles a C++ kernel per graph).
    args = ["train", "--data", "digits", "--model", "textbook", "--epochs", "1", "--batch-size",
            "64", "--amp", "off", "--threads", "1", "--seed", "2"]  # fmt: skip
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = cli(*args, *extra, "--run", tmp_path / name)
        assert out.returncode == 0, out.stderr
    eager = load_file(tmp_path / "eager" / "weights" / "last.safetensors")
    compiled = load_file(tmp_path / "compiled" / "weights" / "last.safetensors")
    assert compiled.keys() == eager.keys()
    assert not any("_orig_mod" in k for k in compiled)
    for k in eager:
        assert torch.allclose(eager[k], compiled[k], rtol=1e-4, atol=1e-5), k
    torch.manual_seed(2)  # the run's initial weights
    start = convlens.create_model("textbook", in_channels=1, num_classes=10, image_size=(8, 8))
    assert any(not torch.equal(v, compiled[k]) for k, v in start.state_dict().items())  # trained
    image = torch.zeros(1, 8, 8, dtype=torch.uint8).numpy()
    assert len(convlens.load(tmp_path / "compiled").predict(image, top_k=3)) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_cuda_training_steps_never_wait_for_the_gpu(tmp_path):
    """Inside the training steps nothing reads a GPU value back (CONVLENS_SYNC_DEBUG=error makes
    torch raise at any such wait), so the CPU queues work ahead of the GPU."""
    (tmp_path / "weighted.yaml").write_text("class_weights: auto\n")  # the loss's own tensor
    out = cli("train", "--config", tmp_path / "weighted.yaml", "--data", "digits", "--device",
              "cuda", "--epochs", "2", "--run", tmp_path / "run",
              env={"CONVLENS_SYNC_DEBUG": "error"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no bf16 on this CPU")
def test_compiled_fastnet_under_bf16_has_the_gradients_of_eager():
    """Inductor fused fastnet's global max-pool with the bf16 layer before it and found no
    maximum to send the gradient to (0/0: NaN from the first step); the pool runs in float32."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    model = convlens.create_model("fastnet", in_channels=1, num_classes=10, image_size=(28, 28))
    model.init_from_data(x)
    grads = []
    for run in (model, torch.compile(model)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.cross_entropy(run(x).float(), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name, g in grads[1].items():  # bf16 rounds differently fused: the same direction
        assert torch.isfinite(g).all(), name
        assert F.cosine_similarity(g.flatten(), grads[0][name].flatten(), dim=0) > 0.9, name


CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("caps", "device", "dtype", "why"),
    [
        (Caps(cpu_amx=True, cpu_bf16=True, cuda_bf16=False), CPU, torch.bfloat16, "AMX"),
        (Caps(cpu_amx=False, cpu_bf16=True, cuda_bf16=False), CPU, None, "without AMX"),
        (Caps(cpu_amx=False, cpu_bf16=False, cuda_bf16=False), CPU, None, "no native bf16"),
        (Caps(cpu_amx=False, cpu_bf16=False, cuda_bf16=True), GPU, torch.bfloat16, "bf16 units"),
        (Caps(cpu_amx=False, cpu_bf16=False, cuda_bf16=False), GPU, torch.float16, "GradScaler"),
    ],
)
def test_amp_auto_takes_bf16_only_where_the_hardware_multiplies_it(caps, device, dtype, why):
    """On AVX512_BF16 without AMX bf16 autocast was 14% slower than float32 (issue 17): auto
    keeps float32 there; a GPU without bf16 units (T4, V100) gets fp16 with a GradScaler."""
    got, reason = choose_amp("auto", device, caps)
    assert got is dtype and why in reason


def test_amp_modes_asked_for_are_kept_or_refused_in_one_line():
    plain = Caps(cpu_amx=False, cpu_bf16=True, cuda_bf16=False)
    assert choose_amp("bf16", CPU, plain)[0] is torch.bfloat16  # asked: kept, even if slower
    assert choose_amp("off", GPU, plain)[0] is None
    assert choose_amp("fp16", GPU, plain)[0] is torch.float16
    for mode, device, caps, message in [
        ("bf16", CPU, Caps(False, False, False), "no native bf16"),
        ("bf16", GPU, plain, "no native bf16"),
        ("fp16", CPU, plain, "for GPUs"),
        ("half", CPU, plain, "must be one of"),
    ]:
        with pytest.raises(ConvlensError, match=message):
            choose_amp(mode, device, caps)


def test_this_machines_choice_is_said_in_the_runs_first_line(tmp_path):
    """The run says which precision it chose and why; fp16's GradScaler path trains on a GPU."""
    out = cli("train", "--data", "digits", "--model", "textbook", "--epochs", "1",
              "--run", tmp_path / "run")  # fmt: skip
    assert out.returncode == 0, out.stderr
    _, reason = choose_amp("auto", CPU)
    assert reason in out.stdout + out.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_fp16_with_a_grad_scaler_trains_on_a_gpu(tmp_path):
    out = cli("train", "--data", "digits", "--model", "textbook", "--epochs", "2", "--device",
              "cuda", "--amp", "fp16", "--run", tmp_path / "run")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "GradScaler" in out.stdout + out.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
