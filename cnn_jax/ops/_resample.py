"""Resampling and patches: upsample, pixel (un)shuffle, unfold and fold.

Every index here is static: ``upsample`` computes PyTorch's source indices and
weights with numpy at trace time (in the same float precision PyTorch uses) and
applies them one spatial axis at a time; ``unfold`` is a stack of strided slices and
``fold``, its transpose, a sum of interior-padded copies, so both are exact for any
dtype and differentiate into each other.
"""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax._checks import (
    POOL_PADDING_STRINGS,
    UPSAMPLE_METHODS,
    check_bool,
    check_choice,
    check_int,
    check_layout,
    ntuple,
    resolve_padding,
)
from cnn_jax.ops._args import (
    batched_spatial_dims,
    channel_axis,
    check_dtype,
    check_padded_size,
    check_size,
    spatial_axes,
    window_input,
    window_output_size,
)

# --------------------------------------------------------------------------- upsample


def _scales(scale_factor, n: int, op: str) -> tuple[float, ...]:
    items = tuple(scale_factor) if isinstance(scale_factor, (list, tuple)) else (scale_factor,) * n
    if len(items) != n:
        raise ValueError(
            f"{op}: scale_factor must be a number or a tuple of {n} numbers (one per spatial "
            f"dim), got {scale_factor!r}"
        )
    for s in items:
        if isinstance(s, bool) or not isinstance(s, numbers.Real):
            raise TypeError(
                f"{op}: scale_factor must be a number or a tuple of numbers, got {scale_factor!r}"
            )
        if not s > 0 or not math.isfinite(s):
            raise ValueError(
                f"{op}: scale_factor must be > 0 and finite in every dim, got {scale_factor!r}"
            )
    return tuple(float(s) for s in items)


def _index_dtype(dtype):
    # PyTorch computes source coordinates in the input's "opmath" type: double for
    # float64 inputs, float otherwise.
    return np.float64 if dtype == jnp.float64 else np.float32


def _source_scale(in_size: int, out_size: int, scale, align_corners: bool, fdt):
    """PyTorch's ``area_pixel_compute_scale``: output-to-input coordinate ratio."""
    if align_corners:
        return fdt(in_size - 1) / fdt(out_size - 1) if out_size > 1 else fdt(0)
    if scale is not None:
        return fdt(1.0 / scale)
    return fdt(in_size) / fdt(out_size)


def _nearest_index(in_size: int, out_size: int, scale) -> np.ndarray:
    """Source index of each output: ``min(floor(dst * ratio), in - 1)`` in float32."""
    ratio = _source_scale(in_size, out_size, scale, False, np.float32)
    src = np.floor(np.arange(out_size, dtype=np.float32) * ratio).astype(np.int64)
    return np.minimum(src, in_size - 1)


def _linear_weights(in_size: int, out_size: int, scale, align_corners: bool, fdt):
    """Two source indices and their weights per output, as PyTorch's CPU kernel."""
    if in_size == out_size:
        idx = np.arange(out_size)
        return idx, idx, np.ones(out_size, fdt), np.zeros(out_size, fdt)
    ratio = _source_scale(in_size, out_size, scale, align_corners, fdt)
    dst = np.arange(out_size).astype(fdt)
    if align_corners:
        real = ratio * dst
    else:
        real = ratio * (dst + fdt(0.5)) - fdt(0.5)
        real = np.where(real < 0, fdt(0), real).astype(fdt)
    i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    lam1 = np.clip(real - i0.astype(fdt), fdt(0), fdt(1)).astype(fdt)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (fdt(1) - lam1).astype(fdt), lam1


def _take(x, index: np.ndarray, axis: int):
    """``x`` indexed along ``axis`` by static indices; repeats become a broadcast."""
    size = x.shape[axis]
    if len(index) == size and np.array_equal(index, np.arange(size)):
        return x
    reps = len(index) // size
    if reps * size == len(index) and np.array_equal(index, np.repeat(np.arange(size), reps)):
        shape = x.shape[: axis + 1] + (reps,) + x.shape[axis + 1 :]
        kept = tuple(i for i in range(x.ndim + 1) if i != axis + 1)
        expanded = lax.broadcast_in_dim(x, shape, kept)
        return expanded.reshape(x.shape[:axis] + (size * reps,) + x.shape[axis + 1 :])
    return jnp.take(x, jnp.asarray(index), axis=axis, mode="clip", indices_are_sorted=True)


def _output_sizes(in_sizes, scale_factor, size, op: str):
    """``(scales, out_sizes)`` of ``upsample``: one of ``scale_factor`` (output
    ``floor(in * scale)``) and ``size``, checked and bounded."""
    n = len(in_sizes)
    if scale_factor is None:
        out_sizes = ntuple(size, n, "size", op)
        check_size(out_sizes, "output", "size", f"size={size!r}", op)
        return (None,) * n, out_sizes
    scales = _scales(scale_factor, n, op)
    out_sizes = tuple(math.floor(i * s) for i, s in zip(in_sizes, scales))
    if any(o <= 0 for o in out_sizes):
        raise ValueError(
            f"{op}: scale_factor must give an output size >= 1 (floor(in * scale)), got "
            f"scale_factor={scale_factor!r} for spatial shape {in_sizes} -> {out_sizes}"
        )
    check_size(out_sizes, "output", "scale_factor", f"scale_factor={scale_factor!r}", op)
    return scales, out_sizes


def upsample(
    x,
    scale_factor=None,
    *,
    size=None,
    method: str = "nearest",
    align_corners: bool = False,
    layout: str = "channels_last",
):
    """Nearest or (bi/tri)linear resizing of the spatial dims, as ``F.interpolate``.

    Output size per dim: ``size``, or ``floor(in * scale_factor)``. Source coordinates
    follow PyTorch (``recompute_scale_factor=None``): with ``scale_factor`` the ratio
    is ``1 / scale_factor``, with ``size`` it is ``in / out``; ``"nearest"`` reads
    input ``min(floor(dst * ratio), in - 1)``; ``"linear"`` interpolates at
    ``ratio * (dst + 0.5) - 0.5`` (clamped at 0), or at ``dst * (in - 1) / (out - 1)``
    with ``align_corners=True``.

    Args:
      x: ``(N, *spatial, C)`` for channels_last or ``(N, C, *spatial)`` for
        channels_first (always batched; the rank sets the number of spatial dims).
      scale_factor: a positive number, or a tuple of one per spatial dim.
      size: the output spatial size: an int or a tuple of ints >= 1. Give exactly one
        of ``scale_factor`` and ``size``.
      method: ``"nearest"`` or ``"linear"`` (linear, bilinear or trilinear by rank).
      align_corners: for ``"linear"`` only: map the corner pixels' centres onto each
        other.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``x`` resized to the output spatial size. Equals
      ``torch.nn.functional.interpolate(x, ..., mode="nearest" | "linear" |
      "bilinear" | "trilinear")``.

    >>> upsample(jnp.ones((1, 4, 5, 3)), 2).shape
    (1, 8, 10, 3)
    """
    op = "upsample"
    layout = check_layout(layout, op)
    method = check_choice(method, UPSAMPLE_METHODS, "method", op)
    n = batched_spatial_dims(x, op)
    align_corners = check_bool(align_corners, "align_corners", op)
    if align_corners and method == "nearest":
        raise ValueError(
            f"{op}: align_corners must be False for method='nearest' (it only applies to "
            f"'linear'), got align_corners={align_corners!r}"
        )
    if (scale_factor is None) == (size is None):
        raise ValueError(
            f"{op}: exactly one of scale_factor and size must be given, got "
            f"scale_factor={scale_factor!r}, size={size!r}"
        )
    axes = spatial_axes(x.ndim, n, layout)
    in_sizes = tuple(x.shape[a] for a in axes)
    scales, out_sizes = _output_sizes(in_sizes, scale_factor, size, op)
    if any(i == 0 for i in in_sizes):
        raise ValueError(f"{op}: x must have non-empty spatial dims, got x.shape={tuple(x.shape)}")
    x = jnp.asarray(x)
    if method == "linear":
        check_dtype(x, "float", "x", op)
    fdt = _index_dtype(x.dtype)
    dtype = x.dtype
    if method == "linear" and jnp.finfo(dtype).bits < 32:
        # Half-precision inputs interpolate in float32 and round once, as PyTorch does.
        x = x.astype(jnp.float32)
    # Last spatial axis first, as PyTorch's kernels interpolate along W, then H, then D.
    for axis, i, o, s in reversed(tuple(zip(axes, in_sizes, out_sizes, scales))):
        if method == "nearest":
            x = _take(x, _nearest_index(i, o, s), axis)
            continue
        if i == o:
            continue
        i0, i1, w0, w1 = _linear_weights(i, o, s, align_corners, fdt)
        shape = [1] * x.ndim
        shape[axis] = o
        w0 = jnp.asarray(w0.reshape(shape), x.dtype)
        w1 = jnp.asarray(w1.reshape(shape), x.dtype)
        x = _take(x, i0, axis) * w0 + _take(x, i1, axis) * w1
    return x.astype(dtype)


# ----------------------------------------------------------------------- pixel shuffle


def _rearrange_args(x, factor, name, layout, op):
    """The checks the pixel (un)shuffles share: ``(x, factor, batch, channels, spatial)``."""
    layout = check_layout(layout, op)
    r = check_int(factor, name, op)
    n = batched_spatial_dims(x, op)
    x = jnp.asarray(x)
    spatial = tuple(x.shape[a] for a in spatial_axes(x.ndim, n, layout))
    return x, r, x.shape[0], x.shape[channel_axis(x.ndim, n, layout)], spatial


def pixel_shuffle(x, upscale_factor, *, layout: str = "channels_last"):
    """Rearrange channels into space: ``C * r**n`` channels to ``C``, each spatial dim ``* r``.

    Input channel ``c * r**n + (i_1 * r + i_2) * r + ...`` goes to output channel
    ``c`` at spatial offset ``(i_1, i_2, ...)`` inside each ``r``-block (PyTorch's
    order). channels_last gives the same result with the channel axis last.

    Args:
      x: ``(N, *spatial, C * r**n)`` for channels_last or ``(N, C * r**n, *spatial)``
        for channels_first (batched; ``n = x.ndim - 2`` spatial dims).
      upscale_factor: ``r``, an int >= 1.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``(N, *[s * r for s in spatial], C)`` (channels_last) or
      ``(N, C, *[s * r for s in spatial])``. For a 4-D input equals
      ``torch.nn.functional.pixel_shuffle``.

    >>> pixel_shuffle(jnp.ones((1, 3, 5, 8)), 2).shape
    (1, 6, 10, 2)
    """
    op = "pixel_shuffle"
    x, r, batch, channels, spatial = _rearrange_args(
        x, upscale_factor, "upscale_factor", layout, op
    )
    n = len(spatial)
    if channels % r**n:
        raise ValueError(
            f"{op}: the channel count must be divisible by upscale_factor**{n} = {r**n}, got "
            f"{channels} channels (x.shape={tuple(x.shape)}) for upscale_factor={r}"
        )
    c = channels // r**n
    if layout == "channels_first":
        # (N, C, r..., S...) -> (N, C, S1, r1, S2, r2, ...)
        x = x.reshape((batch, c) + (r,) * n + spatial)
        perm = (0, 1) + tuple(a for d in range(n) for a in (2 + n + d, 2 + d))
        return x.transpose(perm).reshape((batch, c) + tuple(s * r for s in spatial))
    # (N, S..., C, r...) -> (N, S1, r1, S2, r2, ..., C)
    x = x.reshape((batch,) + spatial + (c,) + (r,) * n)
    perm = (0,) + tuple(a for d in range(n) for a in (1 + d, 2 + n + d)) + (1 + n,)
    return x.transpose(perm).reshape((batch,) + tuple(s * r for s in spatial) + (c,))


def pixel_unshuffle(x, downscale_factor, *, layout: str = "channels_last"):
    """Rearrange space into channels: the inverse of :func:`pixel_shuffle`.

    Args:
      x: ``(N, *spatial, C)`` for channels_last or ``(N, C, *spatial)`` for
        channels_first (batched), every spatial size divisible by ``r``.
      downscale_factor: ``r``, an int >= 1.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``(N, *[s // r for s in spatial], C * r**n)`` (channels_last) or
      ``(N, C * r**n, *[s // r ...])``. For a 4-D input equals
      ``torch.nn.functional.pixel_unshuffle``.

    >>> pixel_unshuffle(jnp.ones((1, 6, 10, 2)), 2).shape
    (1, 3, 5, 8)
    """
    op = "pixel_unshuffle"
    x, r, batch, c, spatial = _rearrange_args(x, downscale_factor, "downscale_factor", layout, op)
    n = len(spatial)
    if any(s % r for s in spatial):
        raise ValueError(
            f"{op}: every spatial size must be divisible by downscale_factor={r}, got "
            f"spatial shape {spatial} (x.shape={tuple(x.shape)})"
        )
    small = tuple(s // r for s in spatial)
    split = tuple(v for s in small for v in (s, r))
    if layout == "channels_first":
        # (N, C, S1, r1, S2, r2, ...) -> (N, C, r..., S...)
        x = x.reshape((batch, c) + split)
        perm = (0, 1) + tuple(3 + 2 * d for d in range(n)) + tuple(2 + 2 * d for d in range(n))
        return x.transpose(perm).reshape((batch, c * r**n) + small)
    # (N, S1, r1, S2, r2, ..., C) -> (N, S..., C, r...)
    x = x.reshape((batch,) + split + (c,))
    perm = (
        (0,)
        + tuple(1 + 2 * d for d in range(n))
        + (1 + 2 * n,)
        + tuple(2 + 2 * d for d in range(n))
    )
    return x.transpose(perm).reshape((batch,) + small + (c * r**n,))


# ------------------------------------------------------------------------ unfold / fold


def _window_geometry(op, n, spatial, window, stride, padding, dilation):
    k = ntuple(window, n, "window", op)
    s = ntuple(stride, n, "stride", op)
    d = ntuple(dilation, n, "dilation", op)
    pads = resolve_padding(
        padding,
        n,
        op,
        input_shape=spatial,
        kernel_size=k,
        stride=s,
        dilation=d,
        allowed_strings=POOL_PADDING_STRINGS,
    )
    check_padded_size(spatial, pads, padding, op)
    out = tuple(
        window_output_size(i, kk, ss, dd, lo, hi)
        for i, kk, ss, dd, (lo, hi) in zip(spatial, k, s, d, pads)
    )
    if any(o <= 0 for o in out):
        raise ValueError(
            f"{op}: window {k} (dilation {d}) must fit in the padded input "
            f"{tuple(i + lo + hi for i, (lo, hi) in zip(spatial, pads))}, got {out} blocks"
        )
    return k, s, d, pads, out


def _offsets(k):
    """Every window offset ``(j_1, ..., j_n)`` in row-major order."""
    return list(np.ndindex(*k))


def unfold(
    x,
    window,
    *,
    stride=1,
    padding=0,
    dilation=1,
    layout: str = "channels_last",
):
    """Extract sliding local blocks (im2col), as ``torch.nn.functional.unfold``.

    Args:
      x: ``(N, *spatial, C)`` for channels_last or ``(N, C, *spatial)`` for
        channels_first; unbatched (no N axis) with a tuple ``window``.
      window: int or tuple, one per spatial dim (an int reads ``x`` as batched).
      stride, dilation: int or tuple per spatial dim, >= 1.
      padding: zero padding: int, tuple, ``(low, high)`` pairs, ``"valid"``,
        ``"same"`` or ``"full"``.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      channels_first: ``(N, C * prod(window), L)``, features ordered ``(C, *window)``
      (PyTorch's); channels_last: ``(N, L, prod(window) * C)``, ordered
      ``(*window, C)`` with C fastest. ``L = prod(out)``, blocks in row-major order,
      ``out = floor((in + lo + hi - dilation * (window - 1) - 1) / stride) + 1``.

    >>> unfold(jnp.ones((2, 3, 5, 5)), 3, layout="channels_first").shape
    (2, 27, 9)
    """
    op = "unfold"
    layout = check_layout(layout, op)
    x, batched, axes, spatial = window_input(x, window, layout, op)
    x, n = jnp.asarray(x), len(spatial)
    k, s, d, pads, out = _window_geometry(op, n, spatial, window, stride, padding, dilation)
    check_size((math.prod(k), math.prod(out)), "patches", "window", f"window={window!r}", op)
    config = [(0, 0, 0)] * x.ndim
    for a, (lo, hi) in zip(axes, pads):
        config[a] = (lo, hi, 0)
    xp = lax.pad(x, jnp.zeros((), x.dtype), config)
    blocks = []
    for offset in _offsets(k):
        start, limit, strides = [0] * x.ndim, list(xp.shape), [1] * x.ndim
        for a, j, ss, dd, o in zip(axes, offset, s, d, out):
            start[a], limit[a], strides[a] = j * dd, j * dd + ss * (o - 1) + 1, ss
        blocks.append(lax.slice(xp, start, limit, strides))
    batch, length = x.shape[0], math.prod(out)
    channels = x.shape[channel_axis(x.ndim, n, layout)]
    if layout == "channels_first":
        patches = jnp.stack(blocks, axis=2).reshape(batch, channels * len(blocks), length)
    else:
        patches = jnp.stack(blocks, axis=-2).reshape(batch, length, len(blocks) * channels)
    return patches if batched else patches[0]


def fold(
    patches,
    output_size,
    window,
    *,
    stride=1,
    padding=0,
    dilation=1,
    layout: str = "channels_last",
):
    """Sum sliding local blocks back into an array (col2im): the transpose of :func:`unfold`.

    Overlapping blocks add up, as ``torch.nn.functional.fold``.

    Args:
      patches: channels_first ``(N, C * prod(window), L)``, channels_last
        ``(N, L, prod(window) * C)`` (feature order as :func:`unfold` returns);
        unbatched without the N axis.
      output_size: the spatial size of the result: int or tuple. The number of
        spatial dims is ``len(output_size)`` or ``len(window)`` when a tuple, else 2
        (as PyTorch).
      window: int or tuple per spatial dim.
      stride, dilation: int or tuple per spatial dim, >= 1.
      padding: as :func:`unfold`; the padded border is dropped after summing.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``(N, *output_size, C)`` (channels_last) or ``(N, C, *output_size)``.

    >>> p = unfold(jnp.ones((1, 2, 4, 4)), 2, stride=2, layout="channels_first")
    >>> fold(p, (4, 4), 2, stride=2, layout="channels_first").shape
    (1, 2, 4, 4)
    """
    op = "fold"
    layout = check_layout(layout, op)
    if isinstance(output_size, (list, tuple)):
        n = len(output_size)
    elif isinstance(window, (list, tuple)):
        n = len(window)
    else:
        n = 2
    if n == 0:
        raise ValueError(
            f"{op}: output_size must have one entry per spatial dim, got {output_size!r}"
        )
    spatial = ntuple(output_size, n, "output_size", op)
    check_size(spatial, "output", "output_size", f"output_size={output_size!r}", op)
    ndim = getattr(patches, "ndim", None)
    if ndim is None:
        raise TypeError(f"{op}: patches must be an array, got {type(patches).__name__}")
    if ndim not in (2, 3):
        raise ValueError(
            f"{op}: patches must have 3 dims (batched) or 2 (unbatched), got "
            f"patches.shape={tuple(patches.shape)}"
        )
    k, s, d, pads, out = _window_geometry(op, n, spatial, window, stride, padding, dilation)
    patches = jnp.asarray(patches)
    check_dtype(patches, "number", "patches", op)
    batched = ndim == 3
    if not batched:
        patches = patches[None]
    _check_patches(patches, batched, layout, spatial, k, s, d, pads, out, op)
    y = _col2im(patches, layout, spatial, k, s, d, pads, out)
    return y if batched else y[0]


def _check_patches(patches, batched, layout, spatial, k, s, d, pads, out, op):
    """``patches`` (batched) must hold ``prod(window)`` features per channel and one
    column per block."""
    kk, length = math.prod(k), math.prod(out)
    feat_ax, len_ax = (1, 2) if layout == "channels_first" else (2, 1)
    if patches.shape[feat_ax] % kk:
        raise ValueError(
            f"{op}: patches.shape[{feat_ax - (not batched)}] must be divisible by prod(window) = "
            f"{kk}, got patches.shape={tuple(patches.shape[int(not batched) :])}"
        )
    if patches.shape[len_ax] != length:
        raise ValueError(
            f"{op}: patches.shape[{len_ax - (not batched)}] must equal the number of blocks "
            f"{length} = prod({out}) for output_size={spatial}, window={k}, stride={s}, "
            f"padding={pads}, dilation={d}, got patches.shape="
            f"{tuple(patches.shape[int(not batched) :])}"
        )


def _col2im(patches, layout, spatial, k, s, d, pads, out):
    """Sum the (checked, batched) blocks into the padded output, then crop the padding."""
    n, kk = len(k), math.prod(k)
    feat_ax = 1 if layout == "channels_first" else 2
    batch, channels = patches.shape[0], patches.shape[feat_ax] // kk
    padded = tuple(i + lo + hi for i, (lo, hi) in zip(spatial, pads))
    if layout == "channels_first":
        blocks = patches.reshape((batch, channels, kk) + out)
        axes, take = tuple(range(2, 2 + n)), lambda j: blocks[:, :, j]
        y_shape = (batch, channels) + padded
    else:
        blocks = patches.reshape((batch,) + out + (kk, channels))
        axes, take = tuple(range(1, 1 + n)), lambda j: blocks[..., j, :]
        y_shape = (batch,) + padded + (channels,)
    zero = jnp.zeros((), patches.dtype)
    y = jnp.zeros(y_shape, patches.dtype)
    for j, offset in enumerate(_offsets(k)):
        # Place block j at offset * dilation, its entries stride apart (interior padding).
        config = [(0, 0, 0)] * len(y_shape)
        for a, jj, ss, dd, o, size in zip(axes, offset, s, d, out, padded):
            lo = jj * dd
            config[a] = (lo, size - lo - ss * (o - 1) - 1, ss - 1)
        y = y + lax.pad(take(j), zero, config)
    start = [0] * len(y_shape)
    limit = list(y_shape)
    for a, (lo, _), size in zip(axes, pads, spatial):
        start[a], limit[a] = lo, lo + size
    return lax.slice(y, start, limit)
