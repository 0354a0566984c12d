"""Training-step throughput of fastnet variants on this CPU (images per second).

One forward + backward + SGD step on random 28x28 grey batches, the product's `fastnet`, for
each variant given: precision (fp32 or bf16 autocast), memory layout (NCHW or channels-last),
batch size, widths and activation. Median of `--steps` timed steps after `--warmup` untimed
ones, all variants interleaved round by round in one process (so a disturbance hits them
alike), printed with the machine (CPU, AMX or not, threads). The epoch column is 55,000 images
at that rate: what the default recipe's epoch would cost in steps alone.

    .venv/bin/python benchmarks/step_throughput.py
    .venv/bin/python benchmarks/step_throughput.py --variants fp32-cl-512,fp32-nchw-512
    (a variant: {fp32|bf16}-{cl|nchw}-{batch}[-w{a}.{b}.{c}][-relu])
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from fashion_mnist_cpu import machine  # benchmarks/ is on sys.path when run as a script
from torch import nn

from convlens.models.fastnet import fastnet

DEFAULT = (
    "fp32-cl-512,fp32-nchw-512,bf16-cl-512,fp32-cl-256,fp32-cl-1024,"
    "fp32-cl-512-w16.64.128,fp32-cl-512-relu"
)


def parse(name: str) -> dict:
    parts = name.split("-")
    spec = {"name": name, "bf16": parts[0] == "bf16", "cl": parts[1] == "cl"}
    spec["batch"] = int(parts[2])
    spec["widths"] = (32, 64, 128)
    spec["relu"] = False
    for extra in parts[3:]:
        if extra.startswith("w"):
            spec["widths"] = tuple(int(w) for w in extra[1:].split("."))
        elif extra == "relu":
            spec["relu"] = True
    return spec


def build(spec: dict):
    torch.manual_seed(0)
    model = fastnet(in_channels=1, num_classes=10, widths=spec["widths"])
    if spec["relu"]:
        for module in list(model.modules()):
            for child, sub in list(module.named_children()):
                if isinstance(sub, nn.GELU):
                    setattr(module, child, nn.ReLU())
    fmt = torch.channels_last if spec["cl"] else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.85, nesterov=True)  # fmt: skip
    x = torch.randn(spec["batch"], 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (spec["batch"],))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=DEFAULT)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"machine": machine()}), flush=True)
    specs = [parse(v) for v in args.variants.split(",")]
    steps = {s["name"]: build(s) for s in specs}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {s["name"]: [] for s in specs}
    for _ in range(args.steps):  # interleaved rounds: a disturbance hits every variant alike
        for spec in specs:
            t0 = time.perf_counter()
            steps[spec["name"]]()
            times[spec["name"]].append(time.perf_counter() - t0)
    first = None
    for spec in specs:
        rate = spec["batch"] / statistics.median(times[spec["name"]])
        first = first or rate
        print(json.dumps({"variant": spec["name"], "images_per_s": round(rate),
                          "epoch_s": round(55_000 / rate, 1),
                          "vs_first": round(rate / first, 3)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
