"""Array-level checks and axis bookkeeping of the ops: rank, size bound, dtype rule, axes.

The argument checks every tier shares (int-or-tuple, padding, layout, choices) live in
:mod:`cnn_jax._checks`; what is here needs the arrays themselves and so only the ops
use it. Same conventions: everything runs at trace time on static values, errors
follow ``"<op>: <argument> must <rule>, got <value>"``, and a checker takes
``(value, <what the rule needs>, name, op)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cnn_jax._checks import MAX_SIZE


def check_size(spatial, what: str, name: str, got: str, op: str) -> None:
    """Bound a padded-input or output spatial shape (see ``MAX_SIZE``) before XLA sees it.

    ``what`` is the array (``"output"``...), ``name`` the argument that set its size
    (``padding``, ``size``...), ``got`` how the caller gave it (``"padding=3"``).
    """
    spatial = tuple(int(v) for v in spatial)
    if max(spatial, default=0) > MAX_SIZE or math.prod(spatial) > MAX_SIZE:
        raise ValueError(
            f"{op}: {name} must keep the {what} within 2**31 - 1 elements per spatial "
            f"dim and over all spatial dims together, got {got} giving {what} spatial "
            f"shape {spatial}"
        )


def check_padded_size(spatial, pads, padding, op: str) -> None:
    """:func:`check_size` of the input padded by resolved ``pads`` (``padding`` as given)."""
    check_size(
        [i + lo + hi for i, (lo, hi) in zip(spatial, pads)],
        "padded input",
        "padding",
        f"padding={padding!r}",
        op,
    )


def window_output_size(
    size: int, k: int, s: int, d: int, lo: int, hi: int, ceil_mode: bool = False
) -> int:
    """Output length of a sliding window (conv or pool) along one dim.

    ``floor((size + lo + hi - d * (k - 1) - 1) / s) + 1`` (``ceil`` with ``ceil_mode``,
    where, as in PyTorch, the last window must start inside the input or the low
    padding). May return a value <= 0; callers turn that into an error.
    """
    span = size + lo + hi - d * (k - 1) - 1
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= size + lo:
            out -= 1
    else:
        out = span // s + 1
    return out


def transpose_output_size(size, k, s, d, pads, output_padding) -> tuple[int, ...]:
    """Output shape of a transposed conv (PyTorch's formula), per dim:
    ``(in - 1) * stride - lo - hi + dilation * (k - 1) + output_padding + 1``. May hold
    values <= 0; callers turn that into an error."""
    return tuple(
        (i - 1) * ss - lo - hi + dd * (kk - 1) + oo + 1
        for i, kk, ss, dd, oo, (lo, hi) in zip(size, k, s, d, output_padding, pads)
    )


def conv_dimension_numbers(n: int, layout: str):
    """``lax.ConvDimensionNumbers`` for ``n`` spatial dims in this library's layouts.

    channels_last: x ``(N, *sp, C)``, kernel ``(*k, I, O)``.
    channels_first: x ``(N, C, *sp)``, kernel ``(O, I, *k)``.
    """
    from jax import lax

    if layout == "channels_last":
        lhs = (0, n + 1) + tuple(range(1, n + 1))
        rhs = (n + 1, n) + tuple(range(n))
    else:
        lhs = rhs = (0, 1) + tuple(range(2, n + 2))
    return lax.ConvDimensionNumbers(lhs_spec=lhs, rhs_spec=rhs, out_spec=lhs)


def spatial_axes(ndim: int, n: int, layout: str) -> tuple[int, ...]:
    """Axes of the ``n`` spatial dims of an array of rank ``ndim`` (batched or not)."""
    if layout == "channels_last":
        return tuple(range(ndim - 1 - n, ndim - 1))
    return tuple(range(ndim - n, ndim))


def channel_axis(ndim: int, n: int, layout: str) -> int:
    """Axis of the channel dim of an array of rank ``ndim`` (batched or not)."""
    return ndim - 1 if layout == "channels_last" else ndim - n - 1


def check_ndim(x, min_ndim: int, dims: str, name: str, op: str) -> int:
    """``x.ndim``, once ``x`` is an array of at least ``min_ndim`` dims (``dims`` says
    which, for the error message)."""
    ndim = getattr(x, "ndim", None)
    if ndim is None:
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}")
    if ndim < min_ndim:
        raise ValueError(
            f"{op}: {name} must have at least {min_ndim} dims {dims}, got "
            f"{name}.shape={tuple(x.shape)}"
        )
    return ndim


def check_rank(x, n: int, fixes: str, op: str) -> bool:
    """Check ``x`` is batched (``n + 2`` dims) or unbatched (``n + 1``); True if batched.

    ``fixes`` names the argument that sets the rank (``kernel``, ``window``...).
    """
    ndim = check_ndim(x, 0, "", "x", op)
    if ndim == n + 2:
        return True
    if ndim == n + 1:
        return False
    raise ValueError(
        f"{op}: x must have {n + 2} dims (batched) or {n + 1} (unbatched) for a "
        f"{n}-D {fixes}, got x.shape={tuple(x.shape)}"
    )


def window_input(x, window, layout: str, op: str, *, hint: str = ""):
    """``(x batched, batched, spatial axes, spatial size)`` for the ops that slide a
    window: a tuple ``window`` fixes the number of spatial dims (``x`` batched or not),
    an int reads ``x`` as batched (``hint`` is added to that error). Refuses an empty
    spatial dim, as PyTorch (padding alone would invent windows)."""
    if isinstance(window, Sequence) and not isinstance(window, str):
        n = len(window)
        if n == 0:
            raise ValueError(f"{op}: window must have one entry per spatial dim, got {window!r}")
        batched = check_rank(x, n, "window", op)
    else:
        n, batched = batched_spatial_dims(x, op, hint=hint), True
    if not batched:
        x = x[None]
    axes = spatial_axes(x.ndim, n, layout)
    size = tuple(x.shape[a] for a in axes)
    if 0 in size:
        raise ValueError(f"{op}: x must have non-empty spatial dims, got x.shape={tuple(x.shape)}")
    return x, batched, axes, size


def batched_spatial_dims(x, op: str, *, hint: str = "") -> int:
    """Spatial rank of ``x`` read as batched, ``x.ndim - 2``: the rule for ops whose rank
    comes from ``x`` itself (int windows, ``upsample``, ``pad``, global pools).

    ``hint`` is appended to the error, e.g. how to pass an unbatched input instead.
    """
    return check_ndim(x, 3, f"(N, *spatial, C or N, C, *spatial){hint}", "x", op) - 2


# Which element types an op takes, one rule for every op (PyTorch's CPU kernels differ
# op by op and dtype by dtype: int64 avg_pool truncates, max_pool1d refuses what
# max_pool2d takes). An op computes exactly in x's dtype or refuses with a TypeError:
#   "float":  means and interpolation (avg/lp/adaptive/global avg pools, linear
#             upsample) would truncate in integers, so they need floating point;
#   "number": sums of (products of) elements (conv, conv_transpose, sum_pool, fold)
#             are exact in integers (wrapping on overflow, as PyTorch); not bool;
#   "any":    selection and data movement (max/min pools, nearest upsample, pixel
#             shuffle, pad, unfold) take every real dtype, bool included.
DTYPE_RULES = ("float", "number", "any")


def check_dtype(x, rule: str, name: str, op: str) -> None:
    """Check ``x``'s dtype against one of ``DTYPE_RULES``; raise ``TypeError`` if not."""
    import jax.numpy as jnp

    dtype = jnp.result_type(x)
    if rule == "float" and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{op}: {name} must be a floating-point array (this op divides or "
            f"interpolates, which integers would truncate), got dtype {dtype}"
        )
    if rule == "number" and dtype == jnp.bool_:
        raise TypeError(
            f"{op}: {name} must be a floating-point or integer array (this op adds "
            f"elements), got dtype {dtype}"
        )


def accum_dtype(dtype):
    """The dtype a sum or mean of ``dtype`` elements accumulates in: float32 for the
    half-precision floats (bfloat16, float16), ``dtype`` itself otherwise.

    PyTorch's CPU kernels accumulate half precision in float32 (its ``opmath`` type)
    and round the result once; summing in bfloat16 instead stops growing once the sum
    is 256 times an element (a 256x256 window of values in [1, 2] averaged 0.0078),
    and float16 sums overflow at 65504 before the division.
    """
    import jax.numpy as jnp

    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return dtype
