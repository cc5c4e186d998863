"""Global and adaptive pooling with PyTorch's bins and PyTorch's max-gradient ties.

Both reductions are separable: the mean (or max) over a box of bins is the mean (or
max) over one spatial axis after another. Axes are reduced from the last spatial axis
to the first, so that a max keeps the first maximum in row-major scan order (the
first row holding the maximum, then the first column in that row), which is the
element PyTorch's ``adaptive_max_pool`` sends the gradient to.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax._checks import check_bool, check_layout
from cnn_jax.ops._args import (
    accum_dtype,
    batched_spatial_dims,
    check_dtype,
    check_rank,
    check_size,
    spatial_axes,
)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _first_max(x, axis: int):
    """``max`` over ``axis`` whose derivative follows the first maximum only.

    ``jnp.max`` splits the gradient evenly between ties; PyTorch's max pools give it
    all to the first maximum, which this matches. The tangent is a masked sum, so the
    reverse pass is a broadcast and a select, with no scatter.
    """
    return jnp.max(x, axis=axis)


@_first_max.defjvp
def _first_max_jvp(axis, primals, tangents):
    (x,), (t,) = primals, tangents
    first = jnp.argmax(x, axis=axis, keepdims=True)
    onehot = lax.broadcasted_iota(first.dtype, x.shape, axis) == first
    return jnp.max(x, axis=axis), jnp.sum(jnp.where(onehot, t, jnp.zeros_like(t)), axis=axis)


def _lowest(dtype):
    if jnp.issubdtype(dtype, jnp.floating):
        return -jnp.inf
    if dtype == jnp.bool_:
        return False
    return jnp.iinfo(dtype).min


def _check_reduce_dtype(x, reduce: str, op: str):
    """Means need floating point; a max takes any real dtype (see ``DTYPE_RULES``)."""
    if reduce == "mean":
        check_dtype(x, "float", "x", op)
    elif jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{op}: x must be a real (not complex) array, got dtype {x.dtype}")


def _bins(size: int, out: int):
    """PyTorch's adaptive bins: ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    starts = [(i * size) // out for i in range(out)]
    ends = [-(-((i + 1) * size) // out) for i in range(out)]
    return starts, ends


def _pool_axis(x, axis: int, out: int, reduce: str):
    """Adaptive-pool ``x`` along one axis to ``out`` bins."""
    size = x.shape[axis]
    if size == out:
        return x
    ndim = x.ndim
    if size % out == 0:
        # Equal, disjoint bins: a reshape and a reduction over the new window axis.
        k = size // out
        xw = x.reshape(x.shape[:axis] + (out, k) + x.shape[axis + 1 :])
        if reduce == "max":
            return _first_max(xw, axis + 1)
        return jnp.mean(xw, axis=axis + 1)
    # Unequal (possibly overlapping) bins: gather each bin, padded to the widest one,
    # with static indices; padded slots hold the identity of the reduction.
    starts, ends = _bins(size, out)
    width = max(e - s for s, e in zip(starts, ends))
    offsets = np.arange(width)
    index = np.minimum(np.asarray(starts)[:, None] + offsets, size - 1)
    valid = offsets[None, :] < (np.asarray(ends) - np.asarray(starts))[:, None]
    xw = jnp.take(x, jnp.asarray(index.reshape(-1)), axis=axis, mode="clip")
    xw = xw.reshape(x.shape[:axis] + (out, width) + x.shape[axis + 1 :])
    bshape = (1,) * axis + (out, width) + (1,) * (ndim - axis - 1)
    valid = jnp.asarray(valid.reshape(bshape))
    if reduce == "max":
        return _first_max(jnp.where(valid, xw, jnp.asarray(_lowest(x.dtype), x.dtype)), axis + 1)
    total = jnp.sum(jnp.where(valid, xw, jnp.zeros((), x.dtype)), axis=axis + 1)
    counts = (np.asarray(ends) - np.asarray(starts)).reshape(
        bshape[: axis + 1] + bshape[axis + 2 :]
    )
    return total / jnp.asarray(counts, total.dtype)


def _output_size(output_size, x, layout: str, op: str):
    """Resolve ``output_size`` to ``(n, batched, sizes)``; ``None`` keeps a dim."""
    if isinstance(output_size, (list, tuple)):
        n = len(output_size)
        if n == 0:
            raise ValueError(
                f"{op}: output_size must have one entry per spatial dim, got {output_size!r}"
            )
        batched = check_rank(x, n, "output_size", op)
        entries = tuple(output_size)
    else:
        n = batched_spatial_dims(
            x, op, hint=" for an int output_size (pass a tuple output_size for an unbatched input)"
        )
        batched, entries = True, (output_size,) * n
    axes = spatial_axes(x.ndim, n, layout)
    sizes = []
    for entry, axis in zip(entries, axes):
        if entry is None:
            sizes.append(x.shape[axis])
            continue
        if isinstance(entry, bool):
            raise TypeError(
                f"{op}: output_size must be an int, None or a tuple of them, got {output_size!r}"
            )
        try:
            entry = operator.index(entry)
        except TypeError:
            raise TypeError(
                f"{op}: output_size must be an int, None or a tuple of them, got {output_size!r}"
            ) from None
        if entry <= 0:
            raise ValueError(f"{op}: output_size must be >= 1 in every dim, got {output_size!r}")
        sizes.append(entry)
    check_size(sizes, "output", "output_size", f"output_size={output_size!r}", op)
    for axis in axes:
        if x.shape[axis] == 0:
            raise ValueError(
                f"{op}: x must have non-empty spatial dims, got x.shape={tuple(x.shape)}"
            )
    return n, batched, tuple(sizes)


def _adaptive(op: str, reduce: str, x, output_size, layout: str):
    layout = check_layout(layout, op)
    n, _, sizes = _output_size(output_size, x, layout, op)
    x = jnp.asarray(x)
    _check_reduce_dtype(x, reduce, op)
    dtype = x.dtype
    if reduce == "mean":  # half precision: every axis in float32, one rounding at the end
        x = x.astype(accum_dtype(dtype))
    axes = spatial_axes(x.ndim, n, layout)
    # Last spatial axis first: the max then keeps the first maximum in scan order.
    for axis, out in reversed(tuple(zip(axes, sizes))):
        x = _pool_axis(x, axis, out, reduce)
    return x.astype(dtype)


def adaptive_avg_pool(x, output_size, *, layout: str = "channels_last"):
    """Adaptive average pooling to a fixed spatial size, with PyTorch's bins.

    Bin ``i`` of ``out`` over an input of size ``in`` spans
    ``[floor(i * in / out), ceil((i + 1) * in / out))``; bins may have different
    sizes and overlap when ``in % out != 0``. When ``in % out == 0`` this is a plain
    reshape and mean.

    Args:
      x: ``(N, *spatial, C)`` for channels_last, ``(N, C, *spatial)`` for
        channels_first; unbatched (no N axis) when ``output_size`` is a tuple.
      output_size: an int (every spatial dim; ``x`` read as batched) or a tuple with
        one int or ``None`` (keep that dim) per spatial dim. Entries must be >= 1.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``x`` with its spatial dims replaced by ``output_size``. Equals
      ``torch.nn.functional.adaptive_avg_pool{1,2,3}d``.

    >>> adaptive_avg_pool(jnp.ones((2, 7, 5, 3)), (3, None)).shape
    (2, 3, 5, 3)
    """
    return _adaptive("adaptive_avg_pool", "mean", x, output_size, layout)


def adaptive_max_pool(x, output_size, *, layout: str = "channels_last"):
    """Adaptive max pooling to a fixed spatial size, with PyTorch's bins.

    Bins, arguments and output shape as :func:`adaptive_avg_pool`; values equal
    ``torch.nn.functional.adaptive_max_pool{1,2,3}d``. The gradient of each output
    goes to the first maximum of its bin in row-major scan order, as in PyTorch.

    >>> adaptive_max_pool(jnp.ones((2, 3, 7, 5)), 2, layout="channels_first").shape
    (2, 3, 2, 2)
    """
    return _adaptive("adaptive_max_pool", "max", x, output_size, layout)


def _global(op: str, reduce: str, x, keepdims, layout: str):
    layout = check_layout(layout, op)
    n = batched_spatial_dims(x, op)
    keepdims = check_bool(keepdims, "keepdims", op)
    axes = spatial_axes(x.ndim, n, layout)
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"{op}: x must have non-empty spatial dims, got x.shape={tuple(x.shape)}")
    x = jnp.asarray(x)
    _check_reduce_dtype(x, reduce, op)
    if reduce == "mean":  # half precision sums in float32 and rounds once (accum_dtype)
        return jnp.mean(x.astype(accum_dtype(x.dtype)), axis=axes, keepdims=keepdims).astype(
            x.dtype
        )
    for axis in reversed(axes):
        x = _first_max(x, axis)
    if keepdims:
        x = jnp.expand_dims(x, axes)
    return x


def global_avg_pool(x, *, keepdims: bool = False, layout: str = "channels_last"):
    """Mean over every spatial dim.

    Args:
      x: ``(N, *spatial, C)`` for channels_last, ``(N, C, *spatial)`` for
        channels_first (always batched).
      keepdims: keep the spatial dims as size 1.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``(N, C)``, or with ``keepdims`` ``(N, 1, ..., 1, C)`` / ``(N, C, 1, ..., 1)``.
      Equals ``adaptive_avg_pool(x, 1)`` (flattened unless ``keepdims``).

    >>> global_avg_pool(jnp.ones((2, 7, 7, 16))).shape
    (2, 16)
    """
    return _global("global_avg_pool", "mean", x, keepdims, layout)


def global_max_pool(x, *, keepdims: bool = False, layout: str = "channels_last"):
    """Max over every spatial dim; the gradient goes to the first maximum in scan order.

    Arguments and output shape as :func:`global_avg_pool`. Equals
    ``adaptive_max_pool(x, 1)`` (flattened unless ``keepdims``), gradient included.

    >>> global_max_pool(jnp.ones((2, 16, 7, 7)), keepdims=True, layout="channels_first").shape
    (2, 16, 1, 1)
    """
    return _global("global_max_pool", "max", x, keepdims, layout)
