"""PyTorch oracles for the pooling tests: layout conversion and value+gradient calls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

TORCH_POOLS = {
    "max": (F.max_pool1d, F.max_pool2d, F.max_pool3d),
    "avg": (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d),
    "lp": (F.lp_pool1d, F.lp_pool2d, F.lp_pool3d),
}


def to_cf(a: np.ndarray, layout: str, batched: bool) -> np.ndarray:
    """Our layout -> PyTorch's (N, C, *spatial) / (C, *spatial)."""
    if layout == "channels_first":
        return a
    return np.moveaxis(a, -1, 1 if batched else 0)


def from_cf(a: np.ndarray, layout: str, batched: bool) -> np.ndarray:
    if layout == "channels_first":
        return a
    return np.moveaxis(a, 1 if batched else 0, -1)


def torch_value_and_grad(fn, x: np.ndarray, g: np.ndarray | None, layout: str, batched: bool):
    """``fn`` (a torch function of a channels_first tensor) at ``x`` in our layout.

    Returns ``(y, dx)`` in our layout, ``dx`` the gradient of ``sum(y * g)`` (None when
    ``g`` is None); ``g`` is given in our layout.
    """
    xt = torch.tensor(np.ascontiguousarray(to_cf(x, layout, batched)), requires_grad=g is not None)
    yt = fn(xt)
    y = from_cf(yt.detach().numpy(), layout, batched)
    if g is None:
        return y, None
    yt.backward(torch.tensor(np.ascontiguousarray(to_cf(g, layout, batched))))
    return y, from_cf(xt.grad.numpy(), layout, batched)


def jax_value_and_grad(f, x: np.ndarray, g_fn):
    """``f(x)`` and the gradient of ``sum(f(x) * g)`` where ``g = g_fn(y.shape)``."""
    y, vjp = jax.vjp(f, jnp.asarray(x))
    g = g_fn(y.shape)
    (dx,) = vjp(jnp.asarray(g, y.dtype))
    return np.asarray(y), np.asarray(dx), g
