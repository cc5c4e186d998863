"""PyTorch oracles for the pooling tests: value+gradient calls and random windows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
import torch
import torch.nn.functional as F
from _layout import from_layout, to_layout

TORCH_POOLS = {
    "max": (F.max_pool1d, F.max_pool2d, F.max_pool3d),
    "avg": (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d),
    "lp": (F.lp_pool1d, F.lp_pool2d, F.lp_pool3d),
}


def torch_value_and_grad(fn, x: np.ndarray, g: np.ndarray | None, layout: str, batched: bool):
    """``fn`` (a torch function of a channels_first tensor) at ``x`` in our layout.

    Returns ``(y, dx)`` in our layout, ``dx`` the gradient of ``sum(y * g)`` (None when
    ``g`` is None); ``g`` is given in our layout.
    """
    xt = torch.tensor(np.ascontiguousarray(from_layout(x, layout, batched)), requires_grad=g is not None)
    yt = fn(xt)
    y = to_layout(yt.detach().numpy(), layout, batched)
    if g is None:
        return y, None
    yt.backward(torch.tensor(np.ascontiguousarray(from_layout(g, layout, batched))))
    return y, to_layout(xt.grad.numpy(), layout, batched)


def jax_value_and_grad(f, x: np.ndarray, g_fn):
    """``f(x)`` and the gradient of ``sum(f(x) * g)`` where ``g = g_fn(y.shape)``."""
    y, vjp = jax.vjp(f, jnp.asarray(x))
    g = g_fn(y.shape)
    (dx,) = vjp(jnp.asarray(g, y.dtype))
    return np.asarray(y), np.asarray(dx), g


# The spatial input sizes of the random pooling grids, per rank.
SPATIAL = {1: (11,), 2: (7, 9), 3: (5, 6, 4)}


def random_window(rng, n: int, dilate: bool):
    """A random ``(k, s, d, p, ceil_mode)`` whose windows fit ``SPATIAL[n]`` padded
    (``d`` all ones unless ``dilate``; int padding <= window // 2, PyTorch's rule)."""
    while True:
        k = tuple(int(v) for v in rng.integers(1, 4 if n == 3 else 5, n))
        s = tuple(int(v) for v in rng.integers(1, 4, n))
        d = tuple(int(v) for v in rng.integers(1, 3, n)) if dilate else (1,) * n
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        if all(i + 2 * pp >= dd * (kk - 1) + 1 for i, pp, dd, kk in zip(SPATIAL[n], p, d, k)):
            return k, s, d, p, bool(rng.integers(0, 2))


def input_shape(n: int, layout: str, batched: bool = True) -> tuple[int, ...]:
    """``SPATIAL[n]`` with 3 channels (and a batch of 2) in ``layout``."""
    shape = (2, *SPATIAL[n], 3) if layout == "channels_last" else (2, 3, *SPATIAL[n])
    return shape if batched else shape[1:]


def grouped_vjps(fns, xs, gs):
    """Values and VJPs of several configurations in one jit (one compilation)."""

    def run(xs, gs):
        outs = []
        for f, x, g in zip(fns, xs, gs):
            y, vjp = jax.vjp(f, x)
            outs.append((y, vjp(g.astype(y.dtype))[0]))
        return outs

    return [(np.asarray(y), np.asarray(dx)) for y, dx in jax.jit(run)(xs, gs)]


def against_reduce_window(x, pool, init, computation, windows, wave):
    """For each ``(k, s, p)`` of ``windows``: ``pool(a, k, s, padding=p)`` (cnn_jax) and
    the plain ``lax.reduce_window`` of ``init``/``computation`` (XLA's gradient), their
    values and the gradients of ``sum(y * g)``, ``g = wave(arange(y.size))``; one jit.
    Returns ``[(y, y_xla, dx, dx_xla), ...]``."""

    def both(x):
        outs = []
        for k, s, p in windows:
            def plain(a, k=k, s=s, p=p):
                return lax.reduce_window(a, init, computation, (1, k, k, 1), (1, s, s, 1),
                                         ((0, 0), (p, p), (p, p), (0, 0)))

            ours = lambda a, k=k, s=s, p=p: pool(a, k, s, padding=p)  # noqa: E731
            g = wave(jnp.arange(plain(x).size, dtype=x.dtype)).reshape(plain(x).shape)
            outs.append((ours(x), plain(x), jax.grad(lambda a: jnp.sum(ours(a) * g))(x),
                         jax.grad(lambda a: jnp.sum(plain(a) * g))(x)))
        return outs

    return jax.jit(both)(x)

