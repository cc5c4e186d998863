"""Prototype: depthwise convolution as shifted multiply-adds, for XLA:CPU.

XLA:CPU computes a depthwise convolution (``feature_group_count == C``) and,
worse, its gradients through a generic grouped-convolution loop: on the 2-core
reference machine ``cj.depthwise_conv`` (one ``lax.conv_general_dilated``, as Flax
and Equinox) measured 5-20x slower than PyTorch forward+backward at MobileNetV2
and EfficientNet shapes (benchmarks/README.md, the ops suite). A depthwise kernel
has only ``kh * kw`` taps per channel, so each pass can be written as that many
element-wise products of shifted views, which XLA fuses into loops it vectorises
along the channels (the minor axis of channels_last data):

* forward: ``y = sum_ij x_pad[:, i::s, j::s, :] * w[i, j]``, one fused loop;
* input gradient: the same form on the cotangent, per output phase of the stride
  (sub-pixel decomposition, as ``cj.conv_transpose``), so no multiply touches an
  inserted zero; phases are interleaved by one reshape;
* kernel gradient: ``dw[i, j] = sum_nhw x_pad[n, i::s, j::s] * g[n]`` for all taps in
  one variadic ``lax.reduce``, so XLA sums the ``kh * kw`` products in one loop over
  the data. Written as ``kh * kw`` separate reductions XLA:CPU makes as many passes
  (measured 3-5x slower; a ``lax.scan`` over images and taps was 1.3-2x slower).

It is a ``jax.custom_vjp`` (so it has no forward-mode autodiff) of channels_last
2-D inputs with one filter per channel (multiplier 1), any stride and explicit
``(low, high)`` padding. Not part of cnn_jax: the ops suite measures it beside
``cj.depthwise_conv`` (column ``prototype``), and ``tests/test_benchmarks.py``
checks its values and gradients against ``cj.depthwise_conv``. Meant for the CPU
backend only: on a GPU the scans would launch ``N * kh * kw`` small kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def depthwise_conv(x, kernel, stride=1, padding=0):
    """Depthwise conv of channels_last ``x`` (N, H, W, C) with ``kernel`` (kh, kw, 1, C).

    ``stride``: int or pair; ``padding``: int, pair, or ``((lo, hi), (lo, hi))``.
    Same result as ``cj.depthwise_conv(x, kernel, stride=stride, padding=padding)``.
    """
    if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
        raise ValueError(
            f"depthwise_conv: kernel must be (kh, kw, 1, C={x.shape[-1]}), got {kernel.shape}"
        )
    s = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if isinstance(padding, int):
        padding = (padding, padding)
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    return _depthwise(x, kernel[:, :, 0, :], s, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x, w, s, pads):
    return _forward(x, w, s, pads)


def _out_size(n, k, s, pad):
    return (n + pad[0] + pad[1] - k) // s + 1


def _window(a, start, size, s):
    """``a[:, start_h::s_h, start_w::s_w, :]`` with ``size`` output rows/cols."""
    n, c = a.shape[0], a.shape[-1]
    limit = (n, start[0] + s[0] * (size[0] - 1) + 1, start[1] + s[1] * (size[1] - 1) + 1, c)
    return lax.slice(a, (0, *start, 0), limit, (1, *s, 1))


def _forward(x, w, s, pads):
    kh, kw = w.shape[:2]
    out = (_out_size(x.shape[1], kh, s[0], pads[0]), _out_size(x.shape[2], kw, s[1], pads[1]))
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    y = None
    for i in range(kh):
        for j in range(kw):
            t = _window(xp, (i, j), out, s) * w[i, j][None, None, None, :]
            y = t if y is None else y + t
    return y


def _phase_taps(a, k, s, lo):
    """Taps ``i`` that reach input phase ``a`` and their cotangent offsets ``d_i``:
    ``dx[s*r + a] = sum_i g[r + d_i] * w[i]`` (zero outside ``g``)."""
    return [(i, (a + lo - i) // s) for i in range(k) if (a + lo - i) % s == 0]


def _input_grad(g, w, x_shape, s, pads):
    n, h, wd, c = x_shape
    kh, kw = w.shape[:2]
    ho, wo = g.shape[1:3]
    rows_h, rows_w = -(-h // s[0]), -(-wd // s[1])
    taps_h = [_phase_taps(a, kh, s[0], pads[0][0]) for a in range(s[0])]
    taps_w = [_phase_taps(b, kw, s[1], pads[1][0]) for b in range(s[1])]
    dh = [d for t in taps_h for _, d in t] or [0]
    dw_ = [d for t in taps_w for _, d in t] or [0]
    lo_h, lo_w = max(0, -min(dh)), max(0, -min(dw_))
    hi_h, hi_w = max(0, rows_h + max(dh) - ho), max(0, rows_w + max(dw_) - wo)
    gp = jnp.pad(g, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    phases = []
    for a in range(s[0]):
        row = []
        for b in range(s[1]):
            acc = None
            for i, di in taps_h[a]:
                for j, dj in taps_w[b]:
                    win = _window(gp, (lo_h + di, lo_w + dj), (rows_h, rows_w), (1, 1))
                    t = win * w[i, j][None, None, None, :]
                    acc = t if acc is None else acc + t
            row.append(jnp.zeros((n, rows_h, rows_w, c), g.dtype) if acc is None else acc)
        phases.append(jnp.stack(row, axis=3))  # (N, Rh, Rw, s_w, C)
    dx = jnp.stack(phases, axis=2)  # (N, Rh, s_h, Rw, s_w, C)
    return dx.reshape(n, rows_h * s[0], rows_w * s[1], c)[:, :h, :wd]


def _kernel_grad(x, g, k, s, pads):
    kh, kw = k
    n, ho, wo, c = g.shape
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    acc = jnp.promote_types(g.dtype, jnp.float32)
    prods = tuple(
        (_window(xp, (i, j), (ho, wo), s) * g).astype(acc) for i in range(kh) for j in range(kw)
    )
    # One variadic reduction: every tap's product is summed in the same loop, so x and g
    # are read once (kh * kw separate reductions read them kh * kw times: 3-5x slower).
    # On large maps the W axis is kept (more parallel work) and summed after.
    axes = (0, 1) if ho * wo >= 28 * 28 else (0, 1, 2)
    sums = lax.reduce(
        prods,
        tuple(jnp.zeros((), acc) for _ in prods),
        lambda a, b: tuple(u + v for u, v in zip(a, b)),
        axes,
    )
    dw = jnp.stack(sums)
    if dw.ndim == 3:
        dw = dw.sum(1)
    return dw.reshape(kh, kw, c)


def _fwd(x, w, s, pads):
    return _forward(x, w, s, pads), (x, w)


def _bwd(s, pads, res, g):
    x, w = res
    return (
        _input_grad(g, w, x.shape, s, pads).astype(x.dtype),
        _kernel_grad(x, g, w.shape[:2], s, pads).astype(w.dtype),
    )


_depthwise.defvjp(_fwd, _bwd)
