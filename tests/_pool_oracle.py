"""PyTorch oracles for the pooling tests: value+gradient calls and random windows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from _layout import from_layout, to_layout
from jax import lax

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
    xt = torch.tensor(
        np.ascontiguousarray(from_layout(x, layout, batched)), requires_grad=g is not None
    )
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
                return lax.reduce_window(
                    a,
                    init,
                    computation,
                    (1, k, k, 1),
                    (1, s, s, 1),
                    ((0, 0), (p, p), (p, p), (0, 0)),
                )

            ours = lambda a, k=k, s=s, p=p: pool(a, k, s, padding=p)  # noqa: E731
            g = wave(jnp.arange(plain(x).size, dtype=x.dtype)).reshape(plain(x).shape)
            outs.append(
                (
                    ours(x),
                    plain(x),
                    jax.grad(lambda a: jnp.sum(ours(a) * g))(x),
                    jax.grad(lambda a: jnp.sum(plain(a) * g))(x),
                )
            )
        return outs

    return jax.jit(both)(x)


# ------------------------------------------------------------------ half precision

HALF_DTYPES = [jnp.bfloat16, jnp.float16]
TORCH_HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def ulp(v, dtype):
    """The spacing of ``dtype`` at ``|v|`` (at its smallest normal below that)."""
    fi = jnp.finfo(dtype)
    v = np.maximum(np.abs(np.asarray(v, np.float64)), float(fi.smallest_normal))
    return 2.0 ** (np.floor(np.log2(v)) - fi.nmant)


def half_vs_torch(rng, dtype, ours, theirs, shape, positive=False, torch_half=True):
    """``ours`` (a channels_first function) in half-precision ``dtype`` on inputs rounded
    to it, against ``theirs`` (PyTorch) in float64 and, with ``torch_half``, in ``dtype``.

    Values and the VJP of ``sum(y * g)`` (``g`` rounded to ``dtype`` too) must be the
    float64 result correctly rounded to ``dtype``, up to float32's own error (within
    0.51 ulp): a float32 accumulation rounded once. Values must be within one ulp of
    PyTorch's in ``dtype`` (its half kernels round a float32 accumulation once, or, for
    lp_pool, each step); its half backward adds in the half type, so VJPs are compared
    within 3 eps of their largest magnitude.
    """
    name = jnp.dtype(dtype).name
    x = rng.standard_normal(shape)
    x = (np.abs(x) + 0.5 if positive else x).astype(dtype).astype(np.float64)
    y, vjp = jax.vjp(ours, jnp.asarray(x, dtype))
    g = rng.standard_normal(y.shape).astype(dtype).astype(np.float64)
    (dx,) = vjp(jnp.asarray(g, dtype))
    assert y.dtype == dtype and dx.dtype == dtype
    y, dx = np.asarray(y, np.float64), np.asarray(dx, np.float64)
    ref = {}
    for tdt in (TORCH_HALF[name], torch.float64) if torch_half else (torch.float64,):
        t = torch.tensor(x).to(tdt).requires_grad_()
        yt = theirs(t)
        yt.backward(torch.tensor(g).to(tdt))
        ref[tdt] = (yt.detach().double().numpy(), t.grad.double().numpy())
    y_64, dx_64 = ref[torch.float64]
    assert y.shape == y_64.shape
    assert np.all(np.abs(y - y_64) <= 0.51 * ulp(y_64, dtype)), "values: not rounded once"
    assert np.all(np.abs(dx - dx_64) <= 0.51 * ulp(dx_64, dtype)), "vjp: not rounded once"
    if torch_half:
        y_h, dx_h = ref[TORCH_HALF[name]]
        assert np.all(np.abs(y - y_h) <= ulp(y_h, dtype)), "values: more than 1 ulp from torch"
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(dx, dx_h, rtol=eps, atol=3 * eps * np.abs(dx_h).max())
