"""Padding of the spatial axes, with PyTorch's four padding modes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cnn_jax._checks import Pads, check_choice, check_layout, resolve_padding
from cnn_jax.ops._args import batched_spatial_dims, check_size, spatial_axes

PAD_MODES = ("zeros", "constant", "reflect", "replicate", "circular")
_NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(x, padding, *, mode="zeros", value=0.0, layout="channels_last"):
    """Pads the spatial axes of ``x``, as ``torch.nn.functional.pad``.

    Args:
      x: batched input, ``(N, *spatial, C)`` (channels_last) or ``(N, C, *spatial)``
        (channels_first); the number of spatial dims is ``x.ndim - 2``.
      padding: int (same on both sides of every spatial dim), tuple of one int per
        spatial dim (symmetric), or ``((low, high), ...)`` pairs, one per spatial dim.
        Amounts must be non-negative.
      mode: ``"zeros"``, ``"constant"`` (fills with ``value``), ``"reflect"`` (mirror
        without repeating the edge; every amount must be < that dim's size),
        ``"replicate"`` (repeat the edge) or ``"circular"`` (wrap around; every
        amount must be <= that dim's size).
      value: fill value for ``mode="constant"``. Every other mode ignores it, so there
        it must stay at its default ``0.0`` (any other value raises ``ValueError``
        rather than being dropped without a word).
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``x`` with each spatial dim grown from ``size`` to ``low + size + high``.

    >>> pad(jnp.ones((1, 4, 4, 3)), ((1, 2), (0, 1)), mode="reflect").shape
    (1, 7, 5, 3)
    """
    op = "pad"
    layout = check_layout(layout, op)
    mode = check_choice(mode, PAD_MODES, "mode", op)
    x = jnp.asarray(x)
    n = batched_spatial_dims(x, op)
    pads = resolve_padding(padding, n, op, allowed_strings=("valid",))
    axes = spatial_axes(x.ndim, n, layout)
    check_size(
        [x.shape[a] + lo + hi for a, (lo, hi) in zip(axes, pads)],
        "output",
        "padding",
        f"padding={padding!r}",
        op,
    )
    if mode != "constant":
        _check_unused_value(value, mode, op)
    if mode == "zeros":
        mode, value = "constant", 0.0
    elif mode == "constant" and not jnp.issubdtype(x.dtype, jnp.inexact):
        _check_value(value, x.dtype, op)
    return pad_spatial(x, pads, mode, axes, "mode", op, value=value)


def pad_spatial(x, pads: Pads, mode: str, axes, name: str, op: str, *, value=0.0):
    """Pads ``axes`` of ``x`` by resolved ``pads`` (shared by ``pad`` and ``conv``).

    ``mode`` is one of ``"constant"``, ``"reflect"``, ``"replicate"``, ``"circular"``;
    ``name`` is the argument that chose the mode, for error messages.
    """
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    sizes = tuple(x.shape[a] for a in axes)
    if mode == "reflect" and any(max(p) >= s for p, s in zip(pads, sizes)):
        raise ValueError(
            f"{op}: padding must be smaller than the input size in every dim for "
            f"{name}='reflect', got padding {pads} for spatial shape {sizes}"
        )
    if mode == "circular" and any(max(p) > s for p, s in zip(pads, sizes)):
        raise ValueError(
            f"{op}: padding must be at most the input size in every dim for "
            f"{name}='circular', got padding {pads} for spatial shape {sizes}"
        )
    if mode == "replicate" and any(s == 0 for s in sizes):
        raise ValueError(
            f"{op}: x must have non-empty spatial dims for {name}='replicate', "
            f"got spatial shape {sizes}"
        )
    widths = [(0, 0)] * x.ndim
    for a, p in zip(axes, pads):
        widths[a] = tuple(p)
    if mode == "constant":
        return jnp.pad(x, widths, mode="constant", constant_values=jnp.asarray(value, x.dtype))
    return jnp.pad(x, widths, mode=_NUMPY_MODE[mode])


def _check_value(value, dtype, op: str) -> None:
    """An integer or bool ``x`` takes only a fill value its dtype holds exactly: PyTorch
    silently truncates ``value=0.7`` to ``0`` for an integer tensor; refuse instead."""
    try:
        cast = np.asarray(value).astype(dtype)
        exact = bool(np.asarray(value) == cast)
    except (TypeError, ValueError, OverflowError):
        exact = False
    if not exact:
        raise ValueError(
            f"{op}: value must be exactly representable in x's dtype {dtype}, got {value!r}"
        )


def _check_unused_value(value, mode: str, op: str) -> None:
    """Only ``mode="constant"`` fills with ``value``; with any other mode a value other
    than the default 0 would be silently ignored, so it is refused, as
    ``torch.nn.functional.pad`` refuses it for its non-constant modes. A traced value
    cannot be checked and is refused too."""
    try:
        zero = bool(np.asarray(value) == 0)  # 0, 0.0, -0.0, numpy zeros
    except (TypeError, ValueError):  # several values, a tracer, not a number
        zero = False
    if not zero:
        raise ValueError(
            f"{op}: value is only used with mode='constant' and must be left at 0.0 for "
            f"mode={mode!r}, got value={value!r}"
        )
