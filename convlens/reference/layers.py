"""The layers of a CNN in NumPy, each with its forward pass and its backward pass written out.

`forward(x)` computes the output and keeps what the backward pass needs; `backward(dout)` takes
dL/d(output) and returns dL/d(input) by the chain rule, adding dL/d(parameter) to each
parameter's `.grad` on the way. Shapes and layouts are PyTorch's: NCHW activations,
(out, in, kh, kw) conv weights, (out, in) linear weights, so one state dict fits both engines.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Parameter:
    """A learnable array and the gradient of the loss with respect to it (torch's .data, .grad)."""

    requires_grad = True

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.grad = np.zeros_like(data)

    @property
    def ndim(self) -> int:
        return self.data.ndim


class Layer:
    """Base class: parameters are the attributes that hold a Parameter."""

    training = True
    needs_input_grad = True  # False: backward skips dL/dx (a first layer's input is the data)

    def parameters(self) -> dict[str, Parameter]:
        return {k: v for k, v in vars(self).items() if isinstance(v, Parameter)}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)


def _uniform(rng: np.random.Generator, fan_in: int, shape: tuple, dtype) -> Parameter:
    # torch's default init for Conv2d and Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1 / math.sqrt(fan_in)
    return Parameter(rng.uniform(-bound, bound, shape).astype(dtype))


class Conv2d(Layer):
    """Filters slide over the image; each output is a multiply-and-sum of one window."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        bias=True,
        *,
        rng=None,
        dtype=np.float32,
    ):
        rng = rng if rng is not None else np.random.default_rng()
        fan_in = in_channels * kernel_size * kernel_size
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = _uniform(rng, fan_in, shape, dtype)  # (O, C, k, k): shared by all places
        self.bias = _uniform(rng, fan_in, (out_channels,), dtype) if bias else None  # (O,)
        self.stride, self.padding = stride, padding

    def forward(self, x: np.ndarray) -> np.ndarray:
        o, c, k, _ = self.weight.data.shape
        cols = im2col(x, k, self.stride, self.padding)  # (C*k*k, B, Ho, Wo)
        _, b, ho, wo = cols.shape
        out = self.weight.data.reshape(o, -1) @ cols.reshape(c * k * k, -1)  # (O, B*Ho*Wo)
        if self.bias is not None:
            out += self.bias.data[:, None]
        self.cache = x.shape, cols
        return out.reshape(o, b, ho, wo).transpose(1, 0, 2, 3)  # (B, O, Ho, Wo)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        x_shape, cols = self.cache  # cols (C*k*k, B, Ho, Wo)
        o, c, k, _ = self.weight.data.shape
        w, cols = self.weight.data.reshape(o, -1), cols.reshape(c * k * k, -1)
        d = dout.transpose(1, 0, 2, 3).reshape(o, -1)  # (O, B*Ho*Wo), columns as in cols
        # out = W @ cols + bias, so dL/dW = dL/dout @ cols^T and dL/dcols = W^T @ dL/dout
        self.weight.grad += (d @ cols.T).reshape(self.weight.data.shape)  # (O, C, k, k)
        if self.bias is not None:
            self.bias.grad += d.sum(1)  # (O,): the bias was added at every place
        if not self.needs_input_grad:
            return None
        b, _, ho, wo = dout.shape
        dcols = (w.T @ d).reshape(c * k * k, b, ho, wo)  # (C*k*k, B, Ho, Wo)
        return col2im(dcols, x_shape, k, self.stride, self.padding)  # (B, C, H, W)


def im2col(x: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    """(B, C, H, W) -> (C*k*k, B, Ho, Wo): window n's pixels in column n, the one copy made."""
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))  # (B, C, H+2p, W+2p), zeros around
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]  # (B, C, Ho, Wo, k, k)
    b, c, ho, wo = win.shape[:4]  # win is a view: every window without copying a pixel
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * k * k, b, ho, wo)  # here they're copied


def col2im(dcols: np.ndarray, x_shape: tuple, k: int, s: int, p: int) -> np.ndarray:
    """The reverse of im2col: each window pixel's gradient is added back to the pixel it was
    copied from, overlapping windows adding up. (C*k*k, B, Ho, Wo) -> (B, C, H, W)."""
    b, c, h, w = x_shape
    _, _, ho, wo = dcols.shape
    dcols = dcols.reshape(c, k, k, b, ho, wo)
    dx = np.zeros((c, b, h + 2 * p, w + 2 * p), dcols.dtype)  # (C, B, Hp, Wp), like dcols
    for i in range(k):
        for j in range(k):
            dx[:, :, i : i + s * ho : s, j : j + s * wo : s] += dcols[:, i, j]  # (C, B, Ho, Wo)
    return dx[:, :, p : p + h, p : p + w].transpose(1, 0, 2, 3)  # the padding's share dropped


class MaxPool2d(Layer):
    """Keep the largest value of each k x k window; the gradient goes to that one input."""

    def __init__(self, kernel_size: int, stride: int | None = None, ceil_mode: bool = False):
        self.k, self.s, self.ceil_mode = kernel_size, stride or kernel_size, ceil_mode

    def out_size(self, n: int) -> int:
        """torch's rule: ceil_mode rounds up, but the last window must start inside the input."""
        k, s = self.k, self.s
        out = (n - k + (s - 1 if self.ceil_mode else 0)) // s + 1
        return out - 1 if self.ceil_mode and (out - 1) * s >= n else out

    def windows(self, xp: np.ndarray, n: int) -> np.ndarray:
        """Element n (row-major) of every window: a strided view (B, C, Ho, Wo) of xp."""
        (i, j), s = divmod(n, self.k), self.s
        return xp[:, :, i : i + s * self.ho : s, j : j + s * self.wo : s]

    def forward(self, x: np.ndarray) -> np.ndarray:
        k, s = self.k, self.s
        b, c, h, w = x.shape
        self.ho, self.wo = ho, wo = self.out_size(h), self.out_size(w)
        hp, wp = (ho - 1) * s + k, (wo - 1) * s + k  # rows and columns the windows cover
        xp = x[:, :, :hp, :wp]  # without ceil_mode the last rows may be left out
        if hp > h or wp > w:  # with it the last window hangs over the edge: pad with -inf
            pad = ((0, 0), (0, 0), (0, max(hp - h, 0)), (0, max(wp - w, 0)))
            xp = np.pad(xp, pad, constant_values=-np.inf)  # -inf is never the maximum
        out = self.windows(xp, 0).copy()
        for n in range(1, k * k):
            np.maximum(out, self.windows(xp, n), out=out)  # (B, C, Ho, Wo)
        self.cache = x.shape, xp, out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        (b, c, h, w), xp, out = self.cache
        dxp = np.zeros(xp.shape, dtype=dout.dtype)
        # d max / d x = 1 for the arg-max, 0 for the others; on a tie the first maximum in
        # row-major order takes it all, as in torch
        free = np.ones(out.shape, dtype=bool)  # (B, C, Ho, Wo): windows not yet routed
        for n in range(self.k * self.k):
            hit = (self.windows(xp, n) == out) & free  # element n is this window's arg-max
            self.windows(dxp, n)[...] += dout * hit
            free &= ~hit
        dx = np.zeros((b, c, h, w), dtype=dout.dtype)
        dx[:, :, : xp.shape[2], : xp.shape[3]] = dxp[:, :, :h, :w]  # drop the -inf padding
        return dx  # (B, C, H, W)


class ReLU(Layer):
    """max(0, x): negative values become zero."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x > 0  # (same shape as x)
        return np.maximum(x, 0)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * self.mask  # slope 1 where x > 0, else 0


class Flatten(Layer):
    """(B, C, H, W) -> (B, C*H*W), in (C, H, W) order as torch's nn.Flatten."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self.shape)


class Linear(Layer):
    """Fully connected: every output is a weighted sum of every input, plus a bias."""

    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype=np.float32):
        rng = rng if rng is not None else np.random.default_rng()
        self.weight = _uniform(rng, in_features, (out_features, in_features), dtype)  # (O, I)
        self.bias = _uniform(rng, in_features, (out_features,), dtype) if bias else None  # (O,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x  # (B, I)
        out = x @ self.weight.data.T  # (B, O)
        return out + self.bias.data if self.bias is not None else out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # out = x @ W^T + b:  dL/dW = dout^T @ x,  dL/db = sum over the batch,  dL/dx = dout @ W
        self.weight.grad += dout.T @ self.x  # (O, I)
        if self.bias is not None:
            self.bias.grad += dout.sum(0)  # (O,)
        return dout @ self.weight.data if self.needs_input_grad else None  # (B, I)


class Dropout(Layer):
    """In training, zero each value with probability p and scale the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.5, *, rng=None) -> None:
        self.p, self.rng = p, rng if rng is not None else np.random.default_rng()

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training or self.p == 0:
            self.mask = None
            return x
        keep = self.rng.random(x.shape) >= self.p
        self.mask = (keep / (1 - self.p)).astype(x.dtype)  # E[mask] = 1: eval needs no rescale
        return x * self.mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout if self.mask is None else dout * self.mask
