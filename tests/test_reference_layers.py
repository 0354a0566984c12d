"""Each NumPy reference layer computes what PyTorch computes: forward, input and parameter
gradients, in float64 to a relative error of 1e-10, over random shapes, strides and paddings."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from convlens.reference import (
    SGD,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    gradcheck,
    softmax,
)

TOL = 1e-10
CASES = settings(max_examples=200, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def assert_rel(ours: np.ndarray, theirs: torch.Tensor, what: str, tol: float = TOL) -> None:
    """max |ours - theirs| <= tol * max |theirs| (exact when theirs is all zeros)."""
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    err = np.abs(ours - theirs).max(initial=0.0)
    assert err <= tol * np.abs(theirs).max(initial=0.0), (what, err)


def run_layer(layer, x: np.ndarray, rng: np.random.Generator):
    """Our output and dL/dx for L = sum(out * r), and the torch tensors to compare them with."""
    out = layer.forward(x)
    r = rng.standard_normal(out.shape)  # dL/d(out)
    return out, layer.backward(r), torch.tensor(x, requires_grad=True), torch.tensor(r)


def tensor(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.tensor(a, requires_grad=True)


@CASES
@given(
    seeds,
    st.integers(1, 3),  # batch
    st.integers(1, 4),  # in channels
    st.integers(1, 4),  # out channels
    st.integers(1, 5),  # kernel
    st.integers(1, 3),  # stride
    st.integers(0, 3),  # padding
    st.integers(0, 8),  # extra rows beyond the smallest input
    st.integers(0, 8),  # extra columns
    st.booleans(),  # bias
)
def test_conv2d_matches_torch(seed, b, c, o, k, s, p, dh, dw, bias):
    rng = np.random.default_rng(seed)
    h, w = max(k - 2 * p, 1) + dh, max(k - 2 * p, 1) + dw
    conv = Conv2d(c, o, k, stride=s, padding=p, bias=bias, rng=rng, dtype=np.float64)
    out, dx, xt, r = run_layer(conv, rng.standard_normal((b, c, h, w)), rng)
    wt, bt = tensor(conv.weight.data), tensor(conv.bias.data if bias else None)
    ot = F.conv2d(xt, wt, bt, stride=s, padding=p)
    ot.backward(r)
    assert_rel(out, ot, "out")
    assert_rel(dx, xt.grad, "dx")
    assert_rel(conv.weight.grad, wt.grad, "dW")
    if bias:
        assert_rel(conv.bias.grad, bt.grad, "db")


@CASES
@given(
    seeds,
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(0, 7),
    st.integers(0, 7),
    st.booleans(),
    st.booleans(),
)
def test_maxpool2d_matches_torch(seed, b, c, k, s, dh, dw, ceil_mode, ties):
    rng = np.random.default_rng(seed)
    shape = (b, c, k + dh, k + dw)
    # ties: small integers, so windows often hold equal maxima; torch routes to the first
    x = rng.integers(-2, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)
    pool = MaxPool2d(k, s, ceil_mode=ceil_mode)
    out, dx, xt, r = run_layer(pool, x, rng)
    ot = F.max_pool2d(xt, k, s, ceil_mode=ceil_mode)
    ot.backward(r)
    assert_rel(out, ot, "out")
    assert_rel(dx, xt.grad, "dx")


@CASES
@given(seeds, st.integers(1, 5), st.integers(1, 7), st.integers(1, 6), st.booleans())
def test_linear_matches_torch(seed, b, i, o, bias):
    rng = np.random.default_rng(seed)
    fc = Linear(i, o, bias=bias, rng=rng, dtype=np.float64)
    out, dx, xt, r = run_layer(fc, rng.standard_normal((b, i)), rng)
    wt, bt = tensor(fc.weight.data), tensor(fc.bias.data if bias else None)
    ot = F.linear(xt, wt, bt)
    ot.backward(r)
    assert_rel(out, ot, "out")
    assert_rel(dx, xt.grad, "dx")
    assert_rel(fc.weight.grad, wt.grad, "dW")
    if bias:
        assert_rel(fc.bias.grad, bt.grad, "db")


@CASES
@given(seeds, st.lists(st.integers(1, 5), min_size=2, max_size=4), st.booleans())
def test_relu_and_flatten_match_torch(seed, shape, zeros):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if zeros:  # exact zeros, as after a max-pool of ReLU outputs: torch's slope there is 0
        x[rng.random(shape) < 0.3] = 0.0
    out, dx, xt, r = run_layer(ReLU(), x, rng)
    ot = F.relu(xt)
    ot.backward(r)
    assert_rel(out, ot, "relu out")
    assert_rel(dx, xt.grad, "relu dx")
    out, dx, xt, r = run_layer(Flatten(), x, rng)
    ot = torch.flatten(xt, 1)
    ot.backward(r)
    assert_rel(out, ot, "flatten out")
    assert_rel(dx, xt.grad, "flatten dx")


@CASES
@given(seeds, st.integers(1, 6), st.integers(2, 7), st.floats(0, 0.5), st.booleans())
def test_cross_entropy_matches_torch(seed, b, k, eps, weighted):
    rng = np.random.default_rng(seed)
    logits, y = rng.standard_normal((b, k)) * 3, rng.integers(0, k, b)
    weight = rng.uniform(0.2, 3, k) if weighted else None
    loss_fn = CrossEntropyLoss(eps, weight=weight)
    loss = loss_fn(logits, y)
    zt = torch.tensor(logits, requires_grad=True)
    wt = None if weight is None else torch.tensor(weight)
    lt = F.cross_entropy(zt, torch.tensor(y), weight=wt, label_smoothing=eps)
    lt.backward()
    assert abs(loss - lt.item()) <= TOL * abs(lt.item())
    assert_rel(loss_fn.backward(), zt.grad, "dlogits")
    assert_rel(softmax(logits), zt.detach().softmax(1), "softmax")


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    loss_fn = CrossEntropyLoss()
    assert loss_fn(logits, np.array([0])) == 0.0
    assert np.isfinite(loss_fn(logits, np.array([2])))
    assert np.allclose(loss_fn.backward(), [[1, 0, -1]])  # p - y


@settings(max_examples=20, deadline=None)
@given(seeds, st.floats(0, 0.8))
def test_dropout_scales_kept_values_and_routes_their_gradient(seed, p):
    rng = np.random.default_rng(seed)
    drop = Dropout(p, rng=rng)
    x = rng.standard_normal((4, 1000))
    out, dx, xt, r = run_layer(drop, x, rng)
    kept = out != 0
    assert abs(kept.mean() - (1 - p)) < 0.05
    ot = xt * torch.tensor(kept / (1 - p))  # torch's dropout with the same mask
    ot.backward(r)
    assert_rel(out, ot, "out")
    assert_rel(dx, xt.grad, "dx")
    drop.training = False
    assert drop.forward(x) is x and drop.backward(x) is x


@CASES
@given(seeds, st.sampled_from([0.0, 0.9]), st.booleans(), st.sampled_from([0.0, 5e-4, 0.1]))
def test_sgd_matches_torch(seed, momentum, nesterov, weight_decay):
    rng = np.random.default_rng(seed)
    fc = Linear(3, 2, rng=rng, dtype=np.float64)
    ours = [fc.weight, fc.bias]
    theirs = [torch.tensor(p.data, requires_grad=True) for p in ours]
    groups = [{"params": [ours[0]], "weight_decay": weight_decay}, {"params": [ours[1]]}]
    opt = SGD(groups, lr=0.1, momentum=momentum, nesterov=nesterov and momentum > 0)
    topt = torch.optim.SGD(
        [{"params": [theirs[0]], "weight_decay": weight_decay}, {"params": [theirs[1]]}],
        lr=0.1,
        momentum=momentum,
        nesterov=nesterov and momentum > 0,
    )
    for step in range(4):
        for group in (*opt.param_groups, *topt.param_groups):
            group["lr"] = 0.1 / (step + 1)  # a schedule sets the rate between steps
        opt.zero_grad()
        for p, t in zip(ours, theirs, strict=True):
            p.grad += rng.standard_normal(p.data.shape)
            t.grad = torch.tensor(p.grad.copy())
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs, strict=True):
        assert_rel(p.data, t, "param after 4 steps", tol=1e-14)


def test_gradcheck_passes_for_every_layer():
    rows = gradcheck.run_all()
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    checked = {r["layer"].split()[0] for r in rows}
    assert checked == {
        "Conv2d",
        "MaxPool2d",
        "ReLU",
        "Flatten",
        "Linear",
        "Dropout",
        "CrossEntropy",
    }
    out = subprocess.run(
        [sys.executable, "-m", "convlens.reference.gradcheck"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"{len(rows)} of {len(rows)} gradients match" in out.stdout


def test_gradcheck_catches_a_wrong_backward(monkeypatch):
    monkeypatch.setattr(ReLU, "backward", lambda self, dout: dout)  # forgets the mask
    bad = [r for r in gradcheck.run_all() if not r["ok"]]
    assert [r["layer"] for r in bad] == ["ReLU"]


@pytest.mark.parametrize("ceil_mode", [True, False])
def test_maxpool_output_size_follows_torch(ceil_mode):
    for k in range(1, 4):
        for s in range(1, 4):
            for n in range(k, 12):
                want = F.max_pool2d(torch.zeros(1, 1, n, n), k, s, ceil_mode=ceil_mode).shape[-1]
                assert MaxPool2d(k, s, ceil_mode).out_size(n) == want, (k, s, n)
