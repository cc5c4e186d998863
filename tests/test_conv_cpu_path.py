"""The CPU im2col path of cj.conv (``ops/_lowering.py``'s ``_conv_im2col``) and its rule.

Oracle: torch.nn.functional.conv{1,2,3}d values and autograd gradients. Both paths are
forced: ``_conv_im2col`` is called directly, and ``conv`` is run with the dispatch
threshold raised (always im2col) or lowered (always lax).
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnn_jax as cj
from cnn_jax.ops import _lowering as conv_mod

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# (x shape NC*, kernel shape OI*, stride, symmetric padding, dilation, groups)
CONFIGS = [
    ((2, 4, 5, 5), (6, 4, 3, 3), 1, 1, 1, 1),
    ((2, 4, 7, 6), (6, 2, 3, 2), (2, 1), (1, 2), (2, 1), 2),
    ((2, 4, 6, 6), (8, 1, 3, 3), 1, 1, 1, 4),  # depthwise, 2 filters per channel
    ((2, 3, 9), (4, 3, 3), 2, 1, 2, 1),
    ((1, 2, 4, 4, 4), (3, 2, 2, 3, 2), (1, 2, 1), 1, 1, 1),
    ((3, 8, 1, 1), (5, 8, 3, 3), 1, 1, 1, 1),  # 1x1 map: only the centre tap is live
    ((3, 4, 2, 2), (5, 4, 3, 3), 1, 1, 1, 1),
    ((3, 4, 4, 4), (5, 4, 3, 3), 2, 1, 1, 1),  # 4x4 -> 2x2
    ((2, 4, 3, 3), (5, 4, 3, 3), 1, 0, 1, 1),  # valid: 1x1 output
]


def _ntuple(v, n):
    return tuple(v) if isinstance(v, tuple) else (v,) * n


def _torch_ref(x, w, stride, padding, dilation, groups, dy):
    n = w.ndim - 2
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    y = TORCH_CONV[n](xt, wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def _data(rng, xs, ws, stride, padding, dilation, groups):
    n = len(ws) - 2
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    xt = torch.tensor(x)
    wt = torch.tensor(w)
    y_shape = TORCH_CONV[n](
        xt, wt, stride=stride, padding=padding, dilation=dilation, groups=groups
    ).shape
    dy = rng.standard_normal(tuple(y_shape)).astype(np.float32)
    return x, w, dy


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c[0]) + str(c[1]) for c in CONFIGS])
def test_im2col_matches_torch_values_and_grads(rng, cfg, layout):
    xs, ws, stride, padding, dilation, groups = cfg
    n = len(ws) - 2
    x, w, dy = _data(rng, xs, ws, stride, padding, dilation, groups)
    y_ref, dx_ref, dw_ref = _torch_ref(x, w, stride, padding, dilation, groups, dy)
    s, d = _ntuple(stride, n), _ntuple(dilation, n)
    pads = tuple((p, p) for p in _ntuple(padding, n))
    if layout == "channels_last":
        x, dy = np.moveaxis(x, 1, -1), np.moveaxis(dy, 1, -1)
        w = np.moveaxis(w, (0, 1), (n + 1, n))

    def f(x, w):
        return conv_mod._conv_im2col(x, w, s, pads, d, groups, layout)

    y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(dy))
    if layout == "channels_last":
        y, dx = np.moveaxis(np.asarray(y), -1, 1), np.moveaxis(np.asarray(dx), -1, 1)
        dw = np.moveaxis(np.asarray(dw), (n + 1, n), (0, 1))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threshold", [0, 10**6], ids=["lax", "im2col"])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_conv_both_paths_match_torch(rng, monkeypatch, threshold, mode):
    """Through the public conv (padding modes, flip, bias, unbatched), each path forced."""
    monkeypatch.setattr(conv_mod, "_IM2COL_MAX_OUT", threshold)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    dy = rng.standard_normal((2, 5, 2, 2)).astype(np.float32)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    xp = F.pad(xt, (1, 1, 1, 1), mode="constant" if mode == "zeros" else mode)
    y_ref = F.conv2d(xp, wt.flip(2, 3), torch.tensor(b), stride=2)
    y_ref.backward(torch.tensor(dy))

    def f(x, w):
        return cj.conv(
            x, w, b, stride=2, padding=1, padding_mode=mode, flip=True, layout="channels_first"
        )

    y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(dy))
    np.testing.assert_allclose(y, y_ref.detach().numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-5, atol=1e-4)
    y1 = cj.conv(
        x[0], w, b, stride=2, padding=1, padding_mode=mode, flip=True, layout="channels_first"
    )
    np.testing.assert_allclose(y1, y_ref.detach().numpy()[0], rtol=1e-5, atol=1e-4)


def _cpu_ops(f, *args):
    return set(re.findall(r"stablehlo\.(\w+)", jax.jit(f).lower(*args).as_text()))


def test_dispatch_rule():
    """On CPU, groups=1 convs with every output size <= 2 (and <= 32 taps) use im2col."""
    rule = conv_mod.cpu_formulation
    pads = ((1, 1), (1, 1))
    assert (
        rule((2, 2, 2, 4), (3, 3, 4, 8), (1, 1), pads, (1, 1), 1, "channels_last", (2, 2))
        == "im2col"
    )
    assert (
        rule((2, 4, 1, 1), (8, 4, 3, 3), (1, 1), pads, (1, 1), 1, "channels_first", (1, 1))
        == "im2col"
    )
    assert (
        rule((2, 3, 3, 4), (3, 3, 4, 8), (1, 1), pads, (1, 1), 1, "channels_last", (3, 3)) == "lax"
    )
    assert (
        rule((2, 7, 7, 4), (7, 7, 4, 8), (1, 1), ((0, 0),) * 2, (1, 1), 1, "channels_last", (1, 1))
        == "lax"
    )  # 49 taps
    # Through cj.conv, lowered for this (CPU) machine: im2col is patches @ kernel.
    conv2 = functools.partial(cj.conv, padding=1)
    assert "convolution" not in _cpu_ops(conv2, jnp.ones((2, 2, 2, 4)), jnp.ones((3, 3, 4, 8)))
    assert "convolution" in _cpu_ops(conv2, jnp.ones((2, 3, 3, 4)), jnp.ones((3, 3, 4, 8)))


def test_windows_that_read_only_padding_give_the_bias(rng):
    # Found by tests/fuzz.py: size 1, kernel 2 dilated by 2, padding 1 puts both taps
    # in the padding, so im2col has no live tap; PyTorch returns the bias there (and
    # no gradient reaches x or the kernel).
    x = rng.standard_normal((2, 3, 1, 2))  # 1x2 output: the im2col path
    w = rng.standard_normal((5, 3, 2, 1))
    b = rng.standard_normal(5)
    kw = dict(padding=(1, 0), dilation=(2, 1))
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = F.conv2d(xt, wt, bt, **kw)
    yt.sum().backward()
    with jax.enable_x64(True):
        f = lambda *a: cj.conv(*a, layout="channels_first", **kw)
        y, vjp = jax.vjp(f, *map(jnp.asarray, (x, w, b)))
        grads = vjp(jnp.ones_like(y))
    np.testing.assert_allclose(np.asarray(y), yt.detach().numpy(), rtol=1e-12)
    for ours, theirs in zip(grads, (xt.grad, wt.grad, bt.grad)):
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-12, atol=1e-12)
