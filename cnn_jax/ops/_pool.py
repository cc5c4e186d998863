"""Window pooling (max, min, average, sum, power-average) with fast gradients.

Semantics are PyTorch's (``torch.nn.functional.{max,avg,lp}_pool{1,2,3}d``), shapes
and ``ceil_mode`` included. How it is computed, and why (CPU timings: the pool
cases of ``benchmarks/``):

* Forward. A window of at most ``_MAX_TAPS`` taps is reduced as one fused
  elementwise chain over its ``prod(window)`` strided slices (``lax.max`` /
  ``lax.add``; windows hanging into the padding see ``-inf`` / ``0``): the same
  numbers as ``lax.reduce_window``, 2-5x faster on XLA:CPU. Larger windows use
  ``lax.reduce_window`` with a monoid JAX knows (``lax.max``/``-inf``,
  ``lax.add``/``0.``) and XLA's own gradients.
* Max/min backward. XLA differentiates a max pool with ``select_and_scatter``
  (~50x the forward for a 3x3/2 pool on CPU, atomics on GPU) and has no gradient at
  all with dilation. Our ``jax.custom_vjp`` finds, per window, the offset of the
  tap PyTorch's scan picks (the first maximum in row-major order; the last NaN;
  never padding) in one fused pass over the strided slices, then routes the output
  gradient back through the stride *phases*: the input splits into ``prod(stride)``
  interleaved grids, tap ``j`` lands on grid ``(j * d - lo) % s`` shifted by
  ``(j * d - lo) // s``, so each grid is a sum of shifted, masked output-sized
  arrays, and the grids interleave back with one stack/transpose/reshape. No
  scatter; non-overlapping windows are a plain select-and-interleave.
* Sum/average backward. The same phase routing with every tap taking the window's
  gradient (a transposed box filter), instead of XLA's transpose, a
  ``reduce_window`` over an interior-padded cotangent that touches ``prod(stride)``
  times more zeros.

The custom VJPs make these functions reverse-mode only: ``jax.jvp``/``jacfwd``
through a pool raise JAX's custom_vjp error.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax._checks import (
    POOL_PADDING_STRINGS,
    check_bool,
    check_int,
    check_layout,
    check_pool_padding,
    is_pairs,
    ntuple,
    resolve_padding,
)
from cnn_jax.ops._args import (
    accum_dtype,
    check_dtype,
    check_padded_size,
    window_input,
    window_output_size,
)


class _Window(NamedTuple):
    """Static description of one pooling call on a *batched* array (hashable)."""

    ndim: int  # rank of the batched array
    axes: tuple[int, ...]  # spatial axes
    size: tuple[int, ...]  # spatial input size
    k: tuple[int, ...]
    s: tuple[int, ...]
    d: tuple[int, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]  # high padding that ends exactly after the last window (may be < 0)
    out: tuple[int, ...]
    hi_decl: tuple[int, ...]  # high padding as the caller declared it

    def full(self, spatial, fill):
        """A per-axis tuple: ``spatial[i]`` on spatial axes, ``fill`` elsewhere."""
        res = [fill] * self.ndim
        for a, v in zip(self.axes, spatial):
            res[a] = v
        return tuple(res)

    def bcast(self, i, vec):
        """A 1-D numpy vector along spatial dim ``i``, shaped to broadcast."""
        shape = [1] * self.ndim
        shape[self.axes[i]] = len(vec)
        return np.asarray(vec).reshape(shape)


def _window(op, x, window, stride, padding, dilation, ceil_mode, layout):
    """Check every argument once and return ``(x_batched, batched, _Window)``."""
    check_layout(layout, op)
    ceil_mode = check_bool(ceil_mode, "ceil_mode", op)
    x, batched, axes, size = window_input(
        x,
        window,
        layout,
        op,
        hint=" for an int window (pass a tuple window to pool an unbatched input)",
    )
    n = len(size)
    k = ntuple(window, n, "window", op)
    s = k if stride is None else ntuple(stride, n, "stride", op)
    d = ntuple(dilation, n, "dilation", op)
    pads = resolve_padding(
        padding,
        n,
        op,
        input_shape=size,
        kernel_size=k,
        stride=s,
        dilation=d,
        allowed_strings=POOL_PADDING_STRINGS,
    )
    check_padded_size(size, pads, padding, op)
    check_pool_padding(padding, pads, k, op)
    out = tuple(
        window_output_size(i, kk, ss, dd, lo, hi, ceil_mode)
        for i, kk, ss, dd, (lo, hi) in zip(size, k, s, d, pads)
    )
    if any(o <= 0 for o in out):
        raise ValueError(
            f"{op}: window {k} (dilation {d}) must fit in the padded input "
            f"{tuple(i + lo + hi for i, (lo, hi) in zip(size, pads))}, got output size {out}"
        )
    lo = tuple(p[0] for p in pads)
    hi = tuple(
        (o - 1) * ss + dd * (kk - 1) + 1 - i - l
        for o, ss, dd, kk, i, l in zip(out, s, d, k, size, lo)
    )
    w = _Window(x.ndim, axes, size, k, s, d, lo, hi, out, tuple(p[1] for p in pads))
    if isinstance(padding, str) or is_pairs(padding):  # else PyTorch's rule held above
        for i in range(n):
            if not _taps_valid(w, i).any(axis=1).all():
                raise ValueError(
                    f"{op}: padding must leave at least one input element in every "
                    f"window, got padding={padding!r} for window={k}, stride={s}, "
                    f"input size {size}"
                )
    return x, batched, w


def _taps_valid(w: _Window, i: int) -> np.ndarray:
    """``(out_i, k_i)`` bool: does tap ``j`` of window ``o`` fall inside the input?"""
    pos = np.arange(w.out[i])[:, None] * w.s[i] - w.lo[i] + np.arange(w.k[i])[None, :] * w.d[i]
    return (pos >= 0) & (pos < w.size[i])


def _run_pads(w: _Window):
    """``reduce_window`` padding: the declared low side, and the high side that ends
    after the last window (never negative: a cropped tail is simply not reached)."""
    return w.full([(l, max(h, 0)) for l, h in zip(w.lo, w.hi)], (0, 0))


# Windows with at most this many taps are reduced as a fused chain of strided
# slices and get our VJPs; larger ones (global-style pools) use XLA's reduce_window
# and its own gradients, so the program stays small.
_MAX_TAPS = 64


def _few_taps(w) -> bool:
    return math.prod(w.k) <= _MAX_TAPS


def _reduce(x, w: _Window, init, computation):
    """The window reduction: ``reduce_window`` with a monoid JAX knows for large
    windows; for small ones the same result as one fused elementwise chain over the
    ``prod(window)`` strided slices of ``x`` (measured 2-5x faster than XLA's
    reduce_window on CPU, both layouts)."""
    if _few_taps(w):
        out = None
        for j in _offsets(w):
            if _reachable(w, j):
                tap = _tap(x, w, j, init)
                out = tap if out is None else computation(out, tap)
        if out is None:  # dilated windows that all fall in the padding (PyTorch: -inf)
            shape = tuple(x.shape[a] if o is None else o for a, o in enumerate(w.full(w.out, None)))
            out = jnp.full(shape, init, x.dtype)
        return out
    return lax.reduce_window(
        x,
        init,
        computation,
        window_dimensions=w.full(w.k, 1),
        window_strides=w.full(w.s, 1),
        padding=_run_pads(w),
        window_dilation=w.full(w.d, 1),
    )


def _offsets(w: _Window):
    """Window offsets ``j`` (tuples) in PyTorch's scan order (row-major)."""
    return list(itertools.product(*(range(kk) for kk in w.k)))


def _tap(x, w: _Window, j, fill):
    """Tap ``j`` of every window (output-shaped): ``x[o * s - lo + j * d]``, ``fill``
    where that lands in the padding.

    A strided slice of the windows whose tap is inside ``x``, padded on the output
    grid: never a padded copy of the whole input.
    """
    start, limit, pads = [], [], []
    for i, jj in enumerate(j):
        ok = np.flatnonzero(_taps_valid(w, i)[:, jj])
        first, last = int(ok[0]), int(ok[-1])
        start.append(first * w.s[i] - w.lo[i] + jj * w.d[i])
        limit.append(last * w.s[i] - w.lo[i] + jj * w.d[i] + 1)
        pads.append((first, w.out[i] - 1 - last, 0))
    sl = lax.slice(
        x,
        w.full(start, 0),
        tuple(lim if lim is not None else x.shape[a] for a, lim in enumerate(w.full(limit, None))),
        w.full(w.s, 1),
    )
    if any(p[:2] != (0, 0) for p in pads):
        sl = lax.pad(sl, jnp.asarray(fill, x.dtype), w.full(pads, (0, 0, 0)))
    return sl


def _reachable(w: _Window, j) -> bool:
    """Whether tap ``j`` is a real input element in at least one window."""
    return all(_taps_valid(w, i)[:, jj].any() for i, jj in enumerate(j))


def _tap_mask(w: _Window, j):
    """Static bool mask (broadcastable to the output) of windows whose tap ``j`` is
    real, or None when all are."""
    masks = [
        w.bcast(i, _taps_valid(w, i)[:, jj])
        for i, jj in enumerate(j)
        if not _taps_valid(w, i)[:, jj].all()
    ]
    return functools.reduce(np.logical_and, masks) if masks else None


def _scatter_phases(w: _Window, operands, fills, contribution, dtype):
    """Transpose of "take tap ``j`` of every window": sum each tap's gradient into x.

    ``operands`` are output-shaped arrays; ``contribution(j, *shifted)`` turns them
    (shifted onto the phase grid of tap ``j``, ``fills`` where shifted in from
    outside) into tap ``j``'s gradient, whose element ``o`` belongs at input
    position ``o * s - lo + j * d``. The input splits into ``prod(s)`` phase grids
    (positions ``q * s + r``); tap ``j`` lands on grid ``r = (j * d - lo) % s``
    shifted by ``t = (j * d - lo) // s``, so each grid is a sum of shifted
    contributions and the grids interleave back into the input with one stack,
    transpose and reshape: no scatter. The operands are padded once for every
    shift and sliced per tap, so the fused loop has no per-tap bounds checks.
    Each grid is summed in the contributions' dtype and cast to ``dtype`` (the
    input's) before the interleave, which so moves the narrower type.
    """
    n = len(w.axes)
    y_shape = operands[0].shape
    m = [-(-i // ss) for i, ss in zip(w.size, w.s)]
    taps = [j for j in _offsets(w) if _reachable(w, j)]  # others: padding everywhere
    shift = {j: [(jj * dd - l) // ss for jj, dd, l, ss in zip(j, w.d, w.lo, w.s)] for j in taps}
    lo = [max(0, *(shift[j][i] for j in taps)) for i in range(n)] if taps else [0] * n
    hi = (
        [max(0, *(m[i] - w.out[i] - shift[j][i] for j in taps)) for i in range(n)]
        if taps
        else [0] * n
    )
    padded = [
        lax.pad(
            op, jnp.asarray(fill, op.dtype), w.full([(a, b, 0) for a, b in zip(lo, hi)], (0, 0, 0))
        )
        for op, fill in zip(operands, fills)
    ]
    phases = {}
    for j in taps:
        r = tuple((jj * dd - l) % ss for jj, dd, l, ss in zip(j, w.d, w.lo, w.s))
        start = w.full([a - tt for a, tt in zip(lo, shift[j])], 0)
        limit = tuple(
            st + (ys if mm is None else mm) for st, mm, ys in zip(start, w.full(m, None), y_shape)
        )
        g = contribution(j, *(lax.slice(op, start, limit) for op in padded))
        phases[r] = g if r not in phases else phases[r] + g
    grid_shape = tuple(ys if mm is None else mm for mm, ys in zip(w.full(m, None), y_shape))
    phases = {r: g.astype(dtype) for r, g in phases.items()}
    zeros = jnp.zeros(grid_shape, dtype)
    order = itertools.product(*(range(ss) for ss in w.s))
    stacked = jnp.stack([phases.get(r, zeros) for r in order]).reshape(w.s + grid_shape)
    # (s_1, ..., s_n, *grid) -> every spatial grid axis followed by its phase axis.
    perm = []
    for ax in range(w.ndim):
        perm.append(n + ax)
        if ax in w.axes:
            perm.append(w.axes.index(ax))
    full = stacked.transpose(perm).reshape(
        tuple(g * ss for g, ss in zip(grid_shape, w.full(w.s, 1)))
    )
    # Crop the part of the last phase row that lies past the input.
    if any(mm * ss != i for mm, ss, i in zip(m, w.s, w.size)):
        full = lax.slice(
            full,
            (0,) * w.ndim,
            tuple(
                full.shape[ax] if ax not in w.axes else w.size[w.axes.index(ax)]
                for ax in range(w.ndim)
            ),
        )
    return full


# --------------------------------------------------------------------------- max


def _neg_inf(dtype):
    if jnp.issubdtype(dtype, jnp.floating):
        return -jnp.inf
    if jnp.issubdtype(dtype, jnp.bool_):
        return False
    return jnp.iinfo(dtype).min


def _idx_dtype(count):
    return jnp.int8 if count <= 127 else jnp.int32


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_core(x, w: _Window):
    return _reduce(x, w, _neg_inf(x.dtype), lax.max)


def _argmax_taps(x, y, w: _Window, *, nan_aware: bool):
    """Offset of each window's winning tap, as PyTorch's CPU kernel picks it.

    PyTorch scans the real taps of a window in row-major order and takes a tap when
    it is greater than the running max or NaN. So the winner is the first tap equal
    to the max ``y``, or, in a window holding NaN (``nan_aware``), the last NaN tap.
    Padding never wins (a static mask), even in an all ``-inf`` window. One fused
    pass over the ``prod(window)`` strided slices of ``x``; no running max is needed
    since ``y`` is known.
    """
    offsets = _offsets(w)
    idx_dtype = _idx_dtype(len(offsets))
    idx = jnp.zeros(y.shape, idx_dtype)
    found = jnp.zeros(y.shape, bool)
    for flat, j in enumerate(offsets):
        if not _reachable(w, j):
            continue  # padding in every window: never wins
        tap, mask = _tap(x, w, j, 0), _tap_mask(w, j)
        eq = tap == y if mask is None else (tap == y) & mask
        hit = eq & ~found
        found = found | eq
        if nan_aware:  # the last NaN, else the first tap equal to the max
            hit = hit | (jnp.isnan(tap) if mask is None else jnp.isnan(tap) & mask)
        idx = jnp.where(hit, jnp.asarray(flat, idx_dtype), idx)
    return idx


def _max_core_fwd(x, w: _Window):
    y = _max_core(x, w)
    if x.size == 0 or not jnp.issubdtype(x.dtype, jnp.inexact):
        return y, _argmax_taps(x, y, w, nan_aware=False)
    # The NaN-aware pass reads every tap twice, which keeps XLA from fusing the
    # slices, so it only runs when sum(y) is NaN (y holds a NaN, or both infinities:
    # harmless, that pass is always right). The conditional also keeps XLA from
    # fusing the argmax pass into every read of idx in the backward pass
    # (recomputing it once per window offset); optimization_barrier does not stop
    # fusion on CPU.
    idx = lax.cond(
        jnp.isnan(jnp.sum(y)),
        functools.partial(_argmax_taps, w=w, nan_aware=True),
        functools.partial(_argmax_taps, w=w, nan_aware=False),
        x,
        y,
    )
    return y, idx


def _max_core_bwd(w: _Window, idx, dy):
    offsets = {j: flat for flat, j in enumerate(_offsets(w))}
    zero = jnp.zeros((), dy.dtype)

    def contribution(j, idx_j, dy_j):  # -1 (never an offset) shifted in from outside
        return jnp.where(idx_j == jnp.asarray(offsets[j], idx.dtype), dy_j, zero)

    return (_scatter_phases(w, (idx, dy), (-1, 0), contribution, dy.dtype),)


_max_core.defvjp(_max_core_fwd, _max_core_bwd)


# --------------------------------------------------------------------------- sum


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _sum_core(x, w: _Window):
    """Window sums of ``x`` in ``accum_dtype(x.dtype)`` (float32 for half precision)."""
    acc = accum_dtype(x.dtype)
    return _reduce(x.astype(acc), w, jnp.zeros((), acc), lax.add)


def _sum_core_fwd(x, w: _Window):
    # The residual only carries x's dtype (an empty array), which the gradient takes.
    return _sum_core(x, w), jnp.zeros((0,), x.dtype)


def _sum_core_bwd(w: _Window, like, dy):
    # Every tap of every window takes the window's gradient: a transposed box filter,
    # summed in dy's (accumulation) dtype, each phase grid rounded once to x's.
    return (_scatter_phases(w, (dy,), (0,), lambda j, dy_j: dy_j, like.dtype),)


_sum_core.defvjp(_sum_core_fwd, _sum_core_bwd)


def _max_any(x, w: _Window, op: str):
    """Max pool with our VJP where it applies: floats, at most ``_MAX_TAPS`` taps or
    any dilation (XLA has no gradient for a dilated max pool)."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{op}: x must be a real (not complex) array, got dtype {x.dtype}")
    if jnp.issubdtype(x.dtype, jnp.floating) and (_few_taps(w) or max(w.d) > 1):
        return _max_core(x, w)
    return _reduce(x, w, _neg_inf(x.dtype), lax.max)


def _sum_any(x, w: _Window):
    """Sum pool with our VJP where it applies (at most ``_MAX_TAPS`` taps), in
    ``accum_dtype(x.dtype)``: the callers round the sums (or means) to x's dtype once."""
    if _few_taps(w):
        return _sum_core(x, w)
    acc = accum_dtype(x.dtype)
    return _reduce(x.astype(acc), w, jnp.zeros((), acc), lax.add)


def _unbatch(y, batched):
    return y if batched else y[0]


# --------------------------------------------------------------------------- public


def max_pool(
    x, window, stride=None, *, padding=0, dilation=1, ceil_mode=False, layout="channels_last"
):
    """Max pooling over 1, 2 or 3 spatial dims, equal to ``torch.nn.functional.max_pool{n}d``.

    Padded positions never win (implicit ``-inf``). The gradient goes to the first
    maximum of each window in row-major scan order, as PyTorch's, and is computed
    without XLA's ``select_and_scatter`` (see the module docstring); dilated windows
    are differentiable too.

    Args:
      x: ``(N, *spatial, C)`` (channels_last) or ``(N, C, *spatial)``
        (channels_first); without ``N`` when ``window`` is a tuple.
      window: int (every spatial dim of a batched ``x``) or tuple, one per dim.
      stride: int or tuple; None means ``window``.
      padding: int or tuple (each ``<= window // 2``, PyTorch's rule), ``(low, high)``
        pairs, ``"valid"``, ``"same"`` or ``"full"`` (every window must keep at least
        one input element).
      dilation: int or tuple, spacing between window taps.
      ceil_mode: round the output size up; the last window must start inside the
        input or the low padding (PyTorch's rule).
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``x`` pooled: each spatial size becomes
      ``floor((in + lo + hi - dilation * (window - 1) - 1) / stride) + 1``
      (``ceil`` with ``ceil_mode``).

    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> max_pool(x, 3, 2, padding=1)[0, ..., 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """
    x, batched, w = _window("max_pool", x, window, stride, padding, dilation, ceil_mode, layout)
    return _unbatch(_max_any(x, w, "max_pool"), batched)


def min_pool(
    x, window, stride=None, *, padding=0, dilation=1, ceil_mode=False, layout="channels_last"
):
    """Min pooling: ``-max_pool(-x)``, padded positions never win (implicit ``+inf``).

    Arguments, output shape and gradient tie-breaking (first minimum in scan order)
    are those of :func:`max_pool`.

    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> min_pool(x, 2)[0, ..., 0].tolist()
    [[0.0, 2.0], [8.0, 10.0]]
    """
    x, batched, w = _window("min_pool", x, window, stride, padding, dilation, ceil_mode, layout)
    if not jnp.issubdtype(x.dtype, jnp.integer) and x.dtype != jnp.bool_:
        return _unbatch(-_max_any(-x, w, "min_pool"), batched)
    if jnp.issubdtype(x.dtype, jnp.bool_):
        init = True
    else:
        init = jnp.iinfo(x.dtype).max
    return _unbatch(_reduce(x, w, init, lax.min), batched)


def _window_count(w: _Window, i: int, include_pad_hi: int | None) -> np.ndarray:
    """Per output position along dim ``i``: how many taps the divisor counts.

    ``include_pad_hi`` None counts real input taps only; otherwise taps inside
    ``[-lo, size + include_pad_hi)`` (PyTorch: the declared padding counts, the
    ceil-mode overhang does not).
    """
    start = np.arange(w.out[i]) * w.s[i] - w.lo[i]
    if include_pad_hi is None:
        end = np.minimum(start + w.k[i], w.size[i])
        start = np.maximum(start, 0)
    else:
        end = np.minimum(start + w.k[i], w.size[i] + include_pad_hi)
    return end - start


def avg_pool(
    x,
    window,
    stride=None,
    *,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
    layout="channels_last",
):
    """Average pooling, equal to ``torch.nn.functional.avg_pool{n}d``.

    Args:
      x: ``(N, *spatial, C)`` or ``(N, C, *spatial)``; without ``N`` for a tuple window.
      window: int or tuple, one per spatial dim.
      stride: int or tuple; None means ``window``.
      padding: int or tuple (each ``<= window // 2``), ``(low, high)`` pairs,
        ``"valid"``, ``"same"`` or ``"full"``; padded positions hold zeros.
      ceil_mode: round the output size up (PyTorch's rule); the overhang past the
        padding is never counted.
      count_include_pad: divide by the window size clipped to the padded input
        (True) or by the number of real input elements (False).
      divisor_override: divide every window sum by this positive int instead.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      The window means; output sizes as :func:`max_pool` with ``dilation=1``.

    >>> x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    >>> avg_pool(x, 2, 1)[0, ..., 0].tolist()
    [[2.0, 3.0], [5.0, 6.0]]
    """
    op = "avg_pool"
    x, batched, w = _window(op, x, window, stride, padding, 1, ceil_mode, layout)
    check_dtype(x, "float", "x", op)
    count_include_pad = check_bool(count_include_pad, "count_include_pad", op)
    if divisor_override is not None:
        divisor_override = check_int(divisor_override, "divisor_override", op)
    # Half precision sums and divides in float32 and rounds once (see accum_dtype).
    acc = accum_dtype(x.dtype)
    total = _sum_any(x, w)
    if divisor_override is not None:
        divisor = divisor_override
    else:
        counts = [
            _window_count(w, i, w.hi_decl[i] if count_include_pad else None)
            for i in range(len(w.axes))
        ]
        if all((c == c[0]).all() for c in counts):
            divisor = float(math.prod(int(c[0]) for c in counts))
        else:
            divisor = functools.reduce(np.multiply, (w.bcast(i, c) for i, c in enumerate(counts)))
    return _unbatch((total / jnp.asarray(divisor, acc)).astype(x.dtype), batched)


def sum_pool(x, window, stride=None, *, padding=0, ceil_mode=False, layout="channels_last"):
    """Sum pooling: the window sums (zero padding), ``avg_pool`` times the window size.

    Equal to ``torch.nn.functional.avg_pool{n}d(..., divisor_override=1)``.

    Args:
      x, window, stride, padding, ceil_mode, layout: as :func:`avg_pool`.

    Returns:
      The window sums; output sizes as :func:`max_pool` with ``dilation=1``.

    >>> x = jnp.ones((1, 4, 4, 1))
    >>> sum_pool(x, 2)[0, ..., 0].tolist()
    [[4.0, 4.0], [4.0, 4.0]]
    """
    x, batched, w = _window("sum_pool", x, window, stride, padding, 1, ceil_mode, layout)
    check_dtype(x, "number", "x", "sum_pool")
    # Half precision sums in float32 and rounds once; integers stay exact (see accum_dtype).
    return _unbatch(_sum_any(x, w).astype(x.dtype), batched)


def lp_pool(x, p, window, stride=None, *, ceil_mode=False, layout="channels_last"):
    """Power-average pooling ``(sum over the window of x ** p) ** (1 / p)``.

    Computed exactly as ``torch.nn.functional.lp_pool{n}d``:
    ``(sign(a) * relu(|a|) * prod(window)) ** (1 / p)`` with ``a = avg_pool(x ** p)``
    (so a ceil-mode window that hangs over the edge is scaled by the full window
    size, as PyTorch does). ``p = 1`` is sum pooling, large ``p`` approaches max
    pooling of ``|x|``.

    Args:
      x: ``(N, *spatial, C)`` or ``(N, C, *spatial)``; without ``N`` for a tuple window.
      p: the power, a real number > 0; ``inf`` is max pooling of ``|x|`` (as PyTorch).
      window, stride, ceil_mode, layout: as :func:`avg_pool` (no padding).

    Returns:
      The pooled array; output sizes as :func:`avg_pool` with ``padding=0``.

    >>> x = jnp.full((1, 2, 2, 1), 3.0)
    >>> lp_pool(x, 2, 2)[0, ..., 0].tolist()
    [[6.0]]
    """
    op = "lp_pool"
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{op}: p must be a real number > 0, got {p!r}")
    if math.isnan(p) or p <= 0:
        raise ValueError(f"{op}: p must be a number > 0, got {p!r}")
    x_b, _, w = _window(op, x, window, stride, 0, 1, ceil_mode, layout)
    check_dtype(x_b, "float", "x", op)
    if math.isinf(p):
        return max_pool(jnp.abs(x), window, stride, ceil_mode=ceil_mode, layout=layout)
    power = int(p) if float(p).is_integer() else float(p)
    # Half precision computes the whole chain in float32 and rounds once (see
    # accum_dtype): its powers would overflow float16 long before the root.
    dtype = x_b.dtype
    x = jnp.asarray(x).astype(accum_dtype(dtype))
    a = avg_pool(x**power, window, stride, ceil_mode=ceil_mode, layout=layout)
    scaled = jnp.sign(a) * jax.nn.relu(jnp.abs(a)) * jnp.asarray(math.prod(w.k), a.dtype)
    return (scaled ** (1.0 / float(p))).astype(dtype)
