"""Argument normalisation shared by every op: one place for int-or-tuple and padding.

Everything here runs at trace time on plain Python values and returns hashable
tuples, so the results can be static arguments under ``jax.jit``. Every error
follows one template: ``"<op>: <argument> must <rule>, got <value>"``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Union

PaddingLike = Union[int, Sequence[int], Sequence[tuple[int, int]], str]
Pads = tuple[tuple[int, int], ...]

LAYOUTS = ("channels_last", "channels_first")

# Size bound, checked before XLA sees a shape. XLA indexes with int32 in places and
# aborts the process (SIGABRT) on some larger values, and a huge padding or output
# size otherwise reaches the allocator (RESOURCE_EXHAUSTED). So every int argument,
# every spatial extent of a padded input or an output, and the spatial volume (the
# product of those extents) of each such array must be at most MAX_SIZE. Batch and
# channel counts come from the caller's own arrays and are not bounded here.
MAX_SIZE = 2**31 - 1
PADDING_STRINGS = ("valid", "same", "full", "causal")


def _as_int(value, op: str, name: str) -> int:
    """``operator.index`` so numpy ints pass and floats/bools fail with our message."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int or a tuple of ints, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{op}: {name} must be an int or a tuple of ints, got {value!r}"
        ) from None
    if out > MAX_SIZE:
        raise ValueError(f"{op}: {name} must be <= 2**31 - 1 in every dim, got {value!r}")
    return int(out)


def check_size(op: str, name: str, got: str, spatial, what: str) -> None:
    """Bound a padded-input or output spatial shape (see ``MAX_SIZE``) before XLA sees it.

    ``name`` is the argument that set the size (``padding``, ``size``...), ``got`` how
    the caller gave it (``"padding=3"``), ``what`` the array (``"output"``...).
    """
    spatial = tuple(int(v) for v in spatial)
    if max(spatial, default=0) > MAX_SIZE or math.prod(spatial) > MAX_SIZE:
        raise ValueError(
            f"{op}: {name} must keep the {what} within 2**31 - 1 elements per spatial "
            f"dim and over all spatial dims together, got {got} giving {what} spatial "
            f"shape {spatial}"
        )


def ntuple(value, n: int, name: str, op: str, *, min_value: int | None = 1) -> tuple[int, ...]:
    """Normalise an int-or-sequence argument to a tuple of ``n`` ints.

    Args:
      value: an int (same for every spatial dim) or a sequence of ``n`` ints.
      n: number of spatial dims.
      name: the argument's name, for error messages.
      op: the public op's name, for error messages.
      min_value: smallest allowed entry, or None for no bound.

    Returns:
      A tuple of ``n`` Python ints.
    """
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{op}: {name} must be an int or a tuple of {n} ints, got {value!r}")
    if isinstance(value, Sequence) or hasattr(value, "__len__") and not hasattr(value, "__index__"):
        items = tuple(value)
        if len(items) != n:
            raise ValueError(
                f"{op}: {name} must be an int or a tuple of {n} ints "
                f"(one per spatial dim), got {value!r} of length {len(items)}"
            )
        out = tuple(_as_int(v, op, name) for v in items)
    else:
        out = (_as_int(value, op, name),) * n
    if min_value is not None and any(v < min_value for v in out):
        raise ValueError(f"{op}: {name} must be >= {min_value} in every dim, got {value!r}")
    return out


def check_layout(layout, op: str) -> str:
    """Validate ``layout`` and return it."""
    if layout not in LAYOUTS:
        raise ValueError(f"{op}: layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def check_choice(value, choices: Sequence[str], name: str, op: str) -> str:
    """Validate a case-insensitive string option and return it lower-cased."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{op}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value.lower()


def is_pairs(padding) -> bool:
    """True when ``padding`` is a sequence of ``(low, high)`` pairs."""
    return (
        isinstance(padding, Sequence)
        and not isinstance(padding, str)
        and len(padding) > 0
        and all(isinstance(p, Sequence) and not isinstance(p, str) for p in padding)
    )


def resolve_padding(
    padding: PaddingLike,
    n: int,
    op: str,
    *,
    input_shape: Sequence[int] | None = None,
    kernel_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
    allowed_strings: Sequence[str] = PADDING_STRINGS,
    name: str = "padding",
) -> Pads:
    """Resolve every accepted padding form to explicit ``((low, high), ...)``.

    Forms:
      * int or tuple of ``n`` ints: symmetric padding per dim (PyTorch style);
      * sequence of ``n`` ``(low, high)`` pairs (lax style);
      * ``"valid"``: no padding;
      * ``"same"``: output size ``ceil(in / stride)``, the extra pad on the high side
        (TF/XLA rule; needs ``input_shape``);
      * ``"full"``: ``dilation * (k - 1)`` on both sides (every overlap);
      * ``"causal"``: ``dilation * (k - 1)`` on the low side only (1-D only).

    Strings are case-insensitive. Negative amounts are rejected.

    Args:
      padding: the padding argument as the user gave it.
      n: number of spatial dims.
      op: the public op's name, for error messages.
      input_shape: spatial input shape, needed for ``"same"``.
      kernel_size, stride, dilation: per-dim tuples (default 1s), needed for strings.
      allowed_strings: the string forms this op accepts.
      name: the argument's name, for error messages.

    Returns:
      A tuple of ``n`` ``(low, high)`` int pairs.
    """
    ones = (1,) * n
    stride = tuple(stride) if stride is not None else ones
    dilation = tuple(dilation) if dilation is not None else ones
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in allowed_strings:
            raise ValueError(
                f"{op}: {name} must be an int, a tuple of {n} ints, {n} (low, high) pairs "
                f"or one of {tuple(allowed_strings)}, got {padding!r}"
            )
        if mode == "valid":
            return ((0, 0),) * n
        if kernel_size is None:
            raise ValueError(f"{op}: {name}={padding!r} needs a kernel size")
        eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation))
        if mode == "full":
            return tuple((e - 1, e - 1) for e in eff)
        if mode == "causal":
            if n != 1:
                raise ValueError(
                    f"{op}: {name}='causal' is only defined for 1-D convolution, "
                    f"got {n} spatial dims"
                )
            return ((eff[0] - 1, 0),)
        # "same": output ceil(in / stride), the odd pixel on the high side.
        if input_shape is None:
            raise ValueError(f"{op}: {name}='same' needs the input shape")
        pads = []
        for size, e, s in zip(input_shape, eff, stride):
            out = -(-size // s)
            total = max((out - 1) * s + e - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if is_pairs(padding):
        if len(padding) != n:
            raise ValueError(
                f"{op}: {name} as (low, high) pairs must have one pair per spatial dim "
                f"({n}), got {padding!r}"
            )
        pads = []
        for pair in padding:
            if len(pair) != 2:
                raise ValueError(
                    f"{op}: {name} pairs must be (low, high), got {padding!r}"
                )
            pads.append((_as_int(pair[0], op, name), _as_int(pair[1], op, name)))
        pads = tuple(pads)
    else:
        try:
            sym = ntuple(padding, n, name, op, min_value=None)
        except TypeError:
            raise TypeError(
                f"{op}: {name} must be an int, a tuple of {n} ints, {n} (low, high) pairs "
                f"or one of {tuple(allowed_strings)}, got {padding!r}"
            ) from None
        pads = tuple((p, p) for p in sym)
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ValueError(f"{op}: {name} must be non-negative, got {padding!r}")
    return pads


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


def conv_dimension_numbers(n: int, layout: str, *, transpose_kernel: bool = False):
    """``lax.ConvDimensionNumbers`` for ``n`` spatial dims in this library's layouts.

    channels_last: x ``(N, *sp, C)``, kernel ``(*k, I, O)``.
    channels_first: x ``(N, C, *sp)``, kernel ``(O, I, *k)``.
    With ``transpose_kernel`` the kernel's I and O are swapped (conv_transpose weights:
    channels_first ``(I, O, *k)``, channels_last ``(*k, I, O)`` read as "in, out" of the
    transposed op).
    """
    from jax import lax

    sp = tuple(range(2, n + 2))
    if layout == "channels_last":
        lhs = (0, n + 1) + tuple(range(1, n + 1))
        rhs = (n + 1, n) + tuple(range(n))
        if transpose_kernel:
            rhs = (n, n + 1) + tuple(range(n))
    else:
        lhs = (0, 1) + sp
        rhs = (0, 1) + sp
        if transpose_kernel:
            rhs = (1, 0) + sp
    return lax.ConvDimensionNumbers(lhs_spec=lhs, rhs_spec=rhs, out_spec=lhs)


def spatial_axes(ndim: int, n: int, layout: str) -> tuple[int, ...]:
    """Axes of the ``n`` spatial dims of an array of rank ``ndim`` (batched or not)."""
    if layout == "channels_last":
        return tuple(range(ndim - 1 - n, ndim - 1))
    return tuple(range(ndim - n, ndim))


def channel_axis(ndim: int, n: int, layout: str) -> int:
    """Axis of the channel dim of an array of rank ``ndim`` (batched or not)."""
    return ndim - 1 if layout == "channels_last" else ndim - n - 1


def check_rank(x, n: int, op: str, fixes: str) -> bool:
    """Check ``x`` is batched (``n + 2`` dims) or unbatched (``n + 1``); True if batched.

    ``fixes`` names the argument that sets the rank (``kernel``, ``window``...).
    """
    ndim = getattr(x, "ndim", None)
    if ndim is None:
        raise TypeError(f"{op}: x must be an array, got {type(x).__name__}")
    if ndim == n + 2:
        return True
    if ndim == n + 1:
        return False
    raise ValueError(
        f"{op}: x must have {n + 2} dims (batched) or {n + 1} (unbatched) for a "
        f"{n}-D {fixes}, got x.shape={tuple(x.shape)}"
    )


def batched_spatial_dims(x, op: str, hint: str = "") -> int:
    """Spatial rank of ``x`` read as batched, ``x.ndim - 2``: the rule for ops whose rank
    comes from ``x`` itself (int windows, ``upsample``, ``pad``, global pools).

    ``hint`` is appended to the error, e.g. how to pass an unbatched input instead.
    """
    ndim = getattr(x, "ndim", None)
    if ndim is None:
        raise TypeError(f"{op}: x must be an array, got {type(x).__name__}")
    if ndim < 3:
        raise ValueError(
            f"{op}: x must have at least 3 dims (N, *spatial, C or N, C, *spatial){hint}, "
            f"got x.shape={tuple(x.shape)}"
        )
    return ndim - 2


def prod(values) -> int:
    return math.prod(values)


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


def check_dtype(x, op: str, rule: str, name: str = "x") -> None:
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


def check_int(value, name: str, op: str, *, min_value: int | None = 1) -> int:
    """Validate a scalar int argument (feature counts, groups, factors) and return it.

    ``operator.index`` so numpy ints pass and floats/bools fail with a ``TypeError``;
    a value below ``min_value`` raises a ``ValueError``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {value!r}") from None
    if min_value is not None and out < min_value:
        raise ValueError(f"{op}: {name} must be >= {min_value}, got {value!r}")
    if out > MAX_SIZE:
        raise ValueError(f"{op}: {name} must be <= 2**31 - 1, got {value!r}")
    return int(out)
