"""Batches: reproducible from the generator alone; shifts and flips move pixels as they should."""

from __future__ import annotations

import pytest
import torch

from convlens.data.batches import channel_stats, iterate_batches, normalize
from convlens.data.dataset import Split


def _split(n=100, c=1, h=12, w=10, seed=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 100, (n, c, h, w), dtype=torch.uint8, generator=g)
    return Split(images, torch.arange(n) % 7)


def _epoch(split, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    return list(iterate_batches(split, 16, shuffle=True, generator=g, **kw))


def test_same_generator_state_gives_identical_batches():
    split = _split()
    a = _epoch(split, 3, translate=2, hflip=True)
    b = _epoch(split, 3, translate=2, hflip=True)
    c = _epoch(split, 4, translate=2, hflip=True)
    assert all(torch.equal(x, y) and torch.equal(i, j) for (x, i), (y, j) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])


def test_global_rng_is_untouched_and_unused():
    split = _split()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = _epoch(split, 3, translate=2, hflip=True)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(12345)
    b = _epoch(split, 3, translate=2, hflip=True)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))


def test_generator_advances_once_per_epoch_however_many_batches_are_read():
    split = _split()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    it = iterate_batches(split, 10, shuffle=True, generator=g1, translate=1, hflip=True)
    next(it)  # a resumed run may stop early; the state after the call must not depend on it
    list(iterate_batches(split, 10, shuffle=True, generator=g2, translate=1, hflip=True))
    assert torch.equal(g1.get_state(), g2.get_state())


def test_every_example_once_labels_aligned_and_drop_last():
    n = 50
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 3, 3).clone()
    split = Split(images, torch.arange(n))
    g = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(split, 16, shuffle=True, generator=g))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(n)) and seen.tolist() != list(range(n))
    for x, y in batches:
        assert torch.equal(x[:, 0, 0, 0].long(), y) and x.dtype == torch.uint8
    batches = list(iterate_batches(split, 16, shuffle=False, drop_last=True))
    assert [len(y) for _, y in batches] == [16, 16, 16]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(48))


def _indexed(n: int, h: int = 12, w: int = 10) -> Split:
    """Random content 0..99 with label = row, so each output can be traced to its source."""
    return Split(_split(n=n, h=h, w=w).images, torch.arange(n))


def test_translate_moves_a_bright_pixel_by_the_drawn_shift():
    t = 2
    split = _indexed(400)
    split.images[:, :, 5, 4] = 255  # a marker far enough from the border to survive any shift
    shifts = set()
    g = torch.Generator().manual_seed(0)
    for x, rows in iterate_batches(split, 64, shuffle=True, generator=g, translate=t):
        for img, row in zip(x, rows, strict=True):
            ys, xs = (img[0] == 255).nonzero(as_tuple=True)
            assert len(ys) == 1
            dy, dx = int(ys[0]) - 5, int(xs[0]) - 4  # the shift drawn for this image
            assert abs(dy) <= t and abs(dx) <= t
            assert torch.equal(img, _shift(split.images[row], dy, dx))  # all of it moved
            shifts.add((dy, dx))
    assert len(shifts) == (2 * t + 1) ** 2  # every shift occurs


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference shift of (C, H, W) down dy and right dx, zero-filled, the slow obvious way."""
    out = torch.zeros_like(x)
    _, h, w = x.shape
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[:, i, j] = x[:, i - dy, j - dx]
    return out


def test_hflip_mirrors_about_half():
    split = _indexed(400)
    flipped = 0
    g = torch.Generator().manual_seed(0)
    for x, rows in iterate_batches(split, 50, shuffle=True, generator=g, hflip=True):
        for img, row in zip(x, rows, strict=True):
            source = split.images[row]
            if not torch.equal(img, source):
                assert torch.equal(img, source.flip(2))  # mirrored left-right, nothing else
                flipped += 1
    assert 150 < flipped < 250


def test_needs_a_generator_for_randomness():
    with pytest.raises(ValueError, match="Generator"):
        iterate_batches(_split(), 8, shuffle=True)
    assert len(list(iterate_batches(_split(), 8, shuffle=False))) == 13


def test_normalize_and_channel_stats():
    split = _split(n=64, c=3)
    mean, std = channel_stats(split)
    x = split.images.double() / 255  # (N, C, H, W)
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    z = normalize(split.images, mean, std)
    assert z.dtype == torch.float32
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-4
    assert torch.equal(normalize(split.images[0], mean, std), z[0])  # (C, H, W) works too
    with pytest.raises(ValueError, match="channels"):
        normalize(split.images, mean[:1], std[:1])
