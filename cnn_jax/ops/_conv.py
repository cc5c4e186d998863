"""The convolution family: conv, depthwise/separable conv, transposed conv, conv gradients.

One function per op serves 1-D, 2-D and 3-D (``n = kernel.ndim - 2``) in both layouts.
Arguments are checked at trace time with the shared normalisers of ``_args``.

Transposed convolution (and so ``conv_input_grad``) is computed by a phase (sub-pixel)
decomposition: output pixel ``m`` of a stride-``s`` transposed conv only receives taps
``t`` with ``t * d = m + lo (mod s)``, so each of the ``prod(s)`` output phases is a
stride-1 convolution of the *undilated* input with a sub-kernel, and the phases are
interleaved by one reshape. Unlike XLA's ``lhs_dilation`` form, no multiply ever
touches an inserted zero, and autodiff of stride-1 convs stays on XLA's fast paths
(see ``benchmarks/conv_transpose_strategies.py`` for the measured comparison).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops._args import (
    channel_axis,
    check_choice,
    check_dtype,
    check_int,
    check_layout,
    check_rank,
    check_size,
    conv_dimension_numbers,
    ntuple,
    resolve_padding,
    spatial_axes,
    window_output_size,
)
from cnn_jax.ops._pad import pad_spatial
from cnn_jax.ops._shape import check_output_padding

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# Above this many output phases (prod(stride)) conv_transpose inserts zeros instead.
_MAX_PHASES = 16
# On CPU, conv uses _conv_im2col when every output spatial size is at most
# _IM2COL_MAX_OUT and the kernel has at most _IM2COL_MAX_TAPS taps. Measured (jit,
# forward + both gradients, 3x3 kernels, 32-256 channels): on 2x2 and 1x1 outputs
# XLA:CPU's convolution is 1.3-11x slower than patches @ kernel, in every run; on 3x3
# to 56x56 outputs im2col measured 0.4x-2x of lax, varying run to run (a loaded
# 2-core machine), so no clear win and those stay on lax. The tap limit bounds the
# number of slices compiled.
_IM2COL_MAX_OUT = 2
_IM2COL_MAX_TAPS = 32


# --------------------------------------------------------------------------- checks


def _num_spatial(kernel, op: str, name: str = "kernel") -> int:
    ndim = getattr(kernel, "ndim", None)
    if ndim is None:
        raise TypeError(f"{op}: {name} must be an array, got {type(kernel).__name__}")
    if ndim < 3:
        raise ValueError(
            f"{op}: {name} must have at least 3 dims (kernel_size + 2 channel dims), "
            f"got {name}.shape={tuple(kernel.shape)}"
        )
    return ndim - 2


def _as_arrays(*arrays):
    arrays = [jnp.asarray(a) for a in arrays]
    dtype = jnp.result_type(*arrays)
    return [a.astype(dtype) for a in arrays]


def _kernel_dims(shape, n: int, layout: str):
    """``(kernel_size, in_per_group, out)`` of a conv kernel (HWIO / OIHW)."""
    if layout == "channels_last":
        return tuple(shape[:n]), shape[n], shape[n + 1]
    return tuple(shape[2:]), shape[1], shape[0]


def _check_conv_channels(op, c_in, kernel_shape, n, layout, groups, name="kernel"):
    """Checks a conv kernel against ``c_in`` input channels; returns ``(k, c_out)``."""
    k, k_in, c_out = _kernel_dims(kernel_shape, n, layout)
    if c_in % groups:
        raise ValueError(
            f"{op}: groups must divide the input channels, got groups={groups} for "
            f"C_in={c_in}"
        )
    if c_out % groups:
        raise ValueError(
            f"{op}: groups must divide the output channels, got groups={groups} for "
            f"C_out={c_out} ({name}.shape={tuple(kernel_shape)})"
        )
    if k_in * groups != c_in:
        raise ValueError(
            f"{op}: {name} in-channels must equal C_in // groups = {c_in} // {groups} = "
            f"{c_in // groups}, got {k_in} ({name}.shape={tuple(kernel_shape)}, "
            f"layout={layout!r})"
        )
    if any(kk < 1 for kk in k):
        raise ValueError(f"{op}: {name} spatial sizes must be >= 1, got {name}.shape={tuple(kernel_shape)}")
    return k, c_out


def _check_fits(op, in_sp, k, s, d, pads, kernel_shape):
    out = tuple(
        window_output_size(i, kk, ss, dd, lo, hi)
        for i, kk, ss, dd, (lo, hi) in zip(in_sp, k, s, d, pads)
    )
    if any(o <= 0 for o in out):
        eff = tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))
        padded = tuple(i + lo + hi for i, (lo, hi) in zip(in_sp, pads))
        raise ValueError(
            f"{op}: kernel (effective size {eff} with dilation {d}) must not exceed the "
            f"padded input {padded}, got kernel.shape={tuple(kernel_shape)}"
        )
    return out


def _add_bias(op, y, bias, c_out, n, layout):
    if bias is None:
        return y
    bias = jnp.asarray(bias)
    if bias.shape != (c_out,):
        raise ValueError(f"{op}: bias must have shape ({c_out},), got {tuple(bias.shape)}")
    shape = [1] * y.ndim
    shape[channel_axis(y.ndim, n, layout)] = c_out
    return y + bias.astype(y.dtype).reshape(shape)


def _kernel_axes(n, layout):
    """Spatial axes of a kernel: ``(*k, I, O)`` or ``(O, I, *k)``."""
    return tuple(range(n)) if layout == "channels_last" else tuple(range(2, n + 2))


def _spatial(shape, n, layout):
    return tuple(shape[a] for a in spatial_axes(len(shape), n, layout))


# --------------------------------------------------------------------------- conv


def conv(
    x,
    kernel,
    bias=None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    flip=False,
    layout="channels_last",
    precision=None,
    preferred_element_type=None,
):
    """N-D convolution (cross-correlation), as ``torch.nn.functional.conv{1,2,3}d``.

    Args:
      x: ``(N, *spatial, C_in)`` (channels_last) or ``(N, C_in, *spatial)``
        (channels_first); the N axis may be left out (unbatched).
      kernel: ``(*k, C_in // groups, C_out)`` (channels_last, HWIO) or
        ``(C_out, C_in // groups, *k)`` (channels_first, OIHW). ``n = kernel.ndim - 2``
        spatial dims.
      bias: ``(C_out,)`` or None.
      stride, dilation: int or tuple of ``n`` ints, >= 1.
      padding: int or tuple (symmetric), ``(low, high)`` pairs, ``"valid"``,
        ``"same"`` (output ``ceil(in / stride)``, extra on the high side), ``"full"``
        (``dilation * (k - 1)`` both sides) or ``"causal"`` (1-D, low side only).
      groups: number of channel groups; must divide ``C_in`` and ``C_out``.
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``,
        applied with the amounts resolved from ``padding``.
      flip: flip the kernel along every spatial axis: true convolution (equal to
        ``np.convolve`` / ``scipy.signal.convolve``) instead of cross-correlation.
      layout: ``"channels_last"`` or ``"channels_first"``.
      precision, preferred_element_type: passed to ``lax.conv_general_dilated``.

    Returns:
      ``(N, *out, C_out)`` (or channels_first), per dim
      ``out = floor((in + lo + hi - dilation * (k - 1) - 1) / stride) + 1``.

    >>> conv(jnp.ones((2, 28, 28, 1)), jnp.ones((3, 3, 1, 8)), padding=2, stride=2).shape
    (2, 15, 15, 8)
    """
    return _conv(
        "conv", x, kernel, bias, stride, padding, dilation, groups, padding_mode, flip,
        layout, precision, preferred_element_type,
    )


def _prologue(op, x, kernel, stride, dilation, groups, layout):
    """The checks ``conv`` and ``conv_transpose`` share, in one place.

    Returns ``(layout, n, batched, x, kernel, stride, dilation, groups, c_in)`` with
    ``x`` batched (a leading axis added when it was not) and both arrays in one dtype.
    """
    layout = check_layout(layout, op)
    n = _num_spatial(kernel, op)
    batched = check_rank(x, n, op, "kernel")
    x, kernel = _as_arrays(x, kernel)
    check_dtype(x, op, "number")
    if not batched:
        x = x[None]
    s = ntuple(stride, n, "stride", op)
    d = ntuple(dilation, n, "dilation", op)
    g = check_int(groups, "groups", op)
    return layout, n, batched, x, kernel, s, d, g, x.shape[channel_axis(x.ndim, n, layout)]


def _conv(op, x, kernel, bias, stride, padding, dilation, groups, padding_mode, flip,
          layout, precision, preferred_element_type):
    padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode", op)
    layout, n, batched, x, kernel, s, d, g, c_in = _prologue(
        op, x, kernel, stride, dilation, groups, layout)
    k, c_out = _check_conv_channels(op, c_in, kernel.shape, n, layout, g)
    axes = spatial_axes(x.ndim, n, layout)
    in_sp = tuple(x.shape[a] for a in axes)
    if 0 in in_sp:  # PyTorch refuses too; padding alone would invent an output
        raise ValueError(f"{op}: x must have non-empty spatial dims, got x.shape={tuple(x.shape)}")
    pads = resolve_padding(padding, n, op, input_shape=in_sp, kernel_size=k, stride=s, dilation=d)
    check_size(op, "padding", f"padding={padding!r}",
               [i + lo + hi for i, (lo, hi) in zip(in_sp, pads)], "padded input")
    out_sp = _check_fits(op, in_sp, k, s, d, pads, kernel.shape)
    if padding_mode != "zeros":
        x = pad_spatial(x, pads, padding_mode, axes, op, "padding_mode")
        pads = ((0, 0),) * n
    if flip:
        kernel = jnp.flip(kernel, axis=_kernel_axes(n, layout))
    x, kernel, pads, k = _trim_dead_taps(x, kernel, k, s, d, pads, out_sp, axes, layout)
    if _use_im2col(g, out_sp, k, c_in):
        y = _conv_im2col(x, kernel, s, pads, d, g, layout, precision, preferred_element_type)
    else:
        y = lax.conv_general_dilated(
            x, kernel, s, pads, rhs_dilation=d,
            dimension_numbers=conv_dimension_numbers(n, layout), feature_group_count=g,
            precision=precision, preferred_element_type=preferred_element_type,
        )
    y = _add_bias(op, y, bias, c_out, n, layout)
    return y if batched else y[0]


def _use_im2col(groups, out_sp, k, c_in):
    """Whether ``_conv`` computes as patches @ kernel rather than XLA's convolution."""
    return (groups == 1 and max(out_sp) <= _IM2COL_MAX_OUT
            and math.prod(k) <= _IM2COL_MAX_TAPS and jax.default_backend() == "cpu")


def _live_taps(i, k, s, d, o, lo):
    """The taps of one spatial dim that read at least one real (non-padding) element."""
    return [t for t in range(k) if any(lo <= t * d + j * s < lo + i for j in range(o))]


def _trim_dead_taps(x, kernel, k, s, d, pads, out_sp, axes, layout):
    """Drop the leading and trailing taps that read only zero padding, per spatial dim.

    Such taps contribute nothing, so slicing them off the kernel (and the padding they
    would have read) leaves the output unchanged and saves their multiplies. It also
    keeps XLA:CPU from aborting: its algebraic simplifier fails a check ("Window
    dimensions do not match RHS shape") compiling the input gradient of some convs
    whose dilated kernel overhangs a tiny input (e.g. a 1x4 input, kernel 3x2,
    dilation (2, 1), stride (1, 2), padding (2, 1)). Ordinary convs have no dead taps
    and are returned untouched, so they lower exactly as raw ``lax`` does. Where
    the kept taps start past the low padding or end before the real input does, the
    input is cropped instead of padded negatively. Returns ``(x, kernel, pads, k)``.
    """
    spans = []
    for i, kk, ss, dd, o, (lo, _) in zip(_spatial(x.shape, len(k), layout), k, s, d,
                                         out_sp, pads):
        live = _live_taps(i, kk, ss, dd, o, lo)
        spans.append((live[0], live[-1]) if live else (0, kk - 1))
    if all(t0 == 0 and t1 == kk - 1 for (t0, t1), kk in zip(spans, k)):
        return x, kernel, pads, k
    new_pads, new_k = [], []
    for (t0, t1), ax, kax, ss, dd, o, (lo, _) in zip(
            spans, axes, _kernel_axes(len(k), layout), s, d, out_sp, pads):
        kernel = lax.slice_in_dim(kernel, t0, t1 + 1, axis=kax)
        # The kept window of output j reads padded positions [j*s + t0*d, j*s + t1*d].
        start, stop = lo - t0 * dd, (o - 1) * ss + (t1 - t0) * dd + 1
        crop = max(-start, 0)  # real elements before the first window: crop them
        i = x.shape[ax] - crop
        x = lax.slice_in_dim(x, crop, x.shape[ax], axis=ax)
        lo = start + crop
        hi = stop - lo - i
        if hi < 0:  # real elements past the last window
            x = lax.slice_in_dim(x, 0, x.shape[ax] + hi, axis=ax)
            hi = 0
        new_pads.append((lo, hi))
        new_k.append(t1 - t0 + 1)
    return x, kernel, tuple(new_pads), tuple(new_k)


def _conv_im2col(x, kernel, stride, pads, dilation, groups, layout, precision=None,
                 preferred_element_type=None):
    """``lax.conv_general_dilated`` as patches (one strided slice per tap) @ kernel.

    ``x`` is batched, ``pads`` are resolved ``(low, high)`` zero pads, ``kernel`` is in
    ``layout`` (HWIO / OIHW), already flipped if wanted; any number of spatial dims and
    groups. Taps that read only padding are dropped, so a 3x3 conv of a 1x1 map is one
    matmul. Autodiff stays matmul-based: the slices transpose to pads (``dx``) and the
    kernel gradient is ``patches^T @ dy``. ``_conv`` calls it on CPU for tiny output
    maps, where XLA:CPU's own convolution is several times slower (see
    ``_IM2COL_MAX_OUT``).
    """
    n = kernel.ndim - 2
    if layout == "channels_first":
        x = jnp.moveaxis(x, 1, -1)
        kernel = jnp.moveaxis(kernel, (0, 1), (-1, -2))  # OIHW -> HWIO
    k, c_in = kernel.shape[:n], x.shape[-1]
    in_sp = x.shape[1:-1]
    out = tuple(window_output_size(i, kk, ss, dd, lo, hi)
                for i, kk, ss, dd, (lo, hi) in zip(in_sp, k, stride, dilation, pads))
    # Per dim, the taps that read at least one real (non-padding) element.
    live = [_live_taps(i, kk, ss, dd, o, lo)
            for i, kk, ss, dd, o, (lo, _) in zip(in_sp, k, stride, dilation, out, pads)]
    x = lax.pad(x, jnp.zeros((), x.dtype),
                [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads], (0, 0, 0)])
    taps = list(itertools.product(*live))
    if not taps:  # every tap reads padding only (large padding, dilation): zeros
        c_out = kernel.shape[-1]
        dtype = preferred_element_type or jnp.result_type(x, kernel)
        y = jnp.zeros((x.shape[0], *out, c_out), dtype)
        return jnp.moveaxis(y, -1, 1) if layout == "channels_first" else y
    cols = []
    for t in taps:
        start = [tt * dd for tt, dd in zip(t, dilation)]
        limit = [a + (o - 1) * ss + 1 for a, o, ss in zip(start, out, stride)]
        cols.append(lax.slice(x, (0, *start, 0), (x.shape[0], *limit, c_in), (1, *stride, 1)))
    if len(taps) == math.prod(k):
        w = kernel.reshape(len(taps), *kernel.shape[n:])
    else:
        w = jnp.stack([kernel[t] for t in taps])
    patches = jnp.stack(cols, axis=-2)  # (N, *out, taps, C_in)
    c_out = w.shape[-1]
    if groups == 1:
        y = lax.dot_general(
            patches.reshape(*patches.shape[:-2], len(taps) * c_in),
            w.reshape(len(taps) * c_in, c_out), (((n + 1,), (0,)), ((), ())),
            precision=precision, preferred_element_type=preferred_element_type)
    else:
        patches = patches.reshape(*patches.shape[:-1], groups, c_in // groups)
        w = w.reshape(len(taps), c_in // groups, groups, c_out // groups)
        y = jnp.einsum("...tgc,tcgo->...go", patches, w, precision=precision,
                       preferred_element_type=preferred_element_type)
        y = y.reshape(*y.shape[:-2], c_out)
    return jnp.moveaxis(y, -1, 1) if layout == "channels_first" else y


def depthwise_conv(x, kernel, bias=None, *, stride=1, padding=0, dilation=1,
                   padding_mode="zeros", layout="channels_last"):
    """Depthwise convolution: ``conv`` with ``groups = C_in``.

    Args:
      x: ``(N, *spatial, C_in)`` or ``(N, C_in, *spatial)``, N optional.
      kernel: ``(*k, 1, C_in * m)`` (channels_last) or ``(C_in * m, 1, *k)``
        (channels_first): ``m`` filters per input channel.
      bias, stride, padding, dilation, padding_mode, layout: as in :func:`conv`.

    Returns:
      ``(N, *out, C_in * m)`` (or channels_first), sizes as :func:`conv`.

    >>> depthwise_conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 8)), padding=1).shape
    (1, 8, 8, 8)
    """
    op = "depthwise_conv"
    layout = check_layout(layout, op)
    n = _num_spatial(kernel, op)
    check_rank(x, n, op, "kernel")
    c_in = x.shape[channel_axis(x.ndim, n, layout)]
    return _conv(op, x, kernel, bias, stride, padding, dilation, c_in, padding_mode,
                 False, layout, None, None)


def separable_conv(x, depthwise_kernel, pointwise_kernel, bias=None, *, stride=1, padding=0,
                   dilation=1, padding_mode="zeros", layout="channels_last"):
    """Depthwise-separable convolution: a depthwise conv, then a 1x1 conv.

    Args:
      x: ``(N, *spatial, C_in)`` or ``(N, C_in, *spatial)``, N optional.
      depthwise_kernel: as :func:`depthwise_conv`'s kernel, ``C_mid = C_in * m`` out.
      pointwise_kernel: ``(*ones, C_mid, C_out)`` (channels_last) or
        ``(C_out, C_mid, *ones)`` (channels_first).
      bias: ``(C_out,)`` or None, added after the pointwise conv.
      stride, padding, dilation, padding_mode: of the depthwise conv.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
      ``(N, *out, C_out)`` (or channels_first), sizes as :func:`conv`.

    >>> dw, pw = jnp.ones((3, 3, 1, 4)), jnp.ones((1, 1, 4, 16))
    >>> separable_conv(jnp.ones((1, 8, 8, 4)), dw, pw, padding=1).shape
    (1, 8, 8, 16)
    """
    op = "separable_conv"
    layout = check_layout(layout, op)
    n = _num_spatial(depthwise_kernel, op, "depthwise_kernel")
    pn = _num_spatial(pointwise_kernel, op, "pointwise_kernel")
    pk = _kernel_dims(pointwise_kernel.shape, pn, layout)[0]
    if pn != n or any(kk != 1 for kk in pk):
        raise ValueError(
            f"{op}: pointwise_kernel must be a 1x1 kernel with {n} spatial dims, got "
            f"pointwise_kernel.shape={tuple(pointwise_kernel.shape)}"
        )
    c_mid = _kernel_dims(depthwise_kernel.shape, n, layout)[2]
    if _kernel_dims(pointwise_kernel.shape, n, layout)[1] != c_mid:
        raise ValueError(
            f"{op}: pointwise_kernel in-channels must equal the depthwise output channels "
            f"{c_mid}, got pointwise_kernel.shape={tuple(pointwise_kernel.shape)}"
        )
    check_rank(x, n, op, "depthwise_kernel")
    c_in = x.shape[channel_axis(x.ndim, n, layout)]
    h = _conv(op, x, depthwise_kernel, None, stride, padding, dilation, c_in, padding_mode,
              False, layout, None, None)
    return _conv(op, h, pointwise_kernel, bias, 1, 0, 1, 1, "zeros", False, layout, None, None)


# --------------------------------------------------------------------------- transpose


def _transpose_kernel(kernel, n, layout, groups):
    """The kernel of the conv that maps ``dy`` to ``dx``: groups regrouped, I/O swapped.

    In: a conv kernel ``(*k, I/G, O)`` / ``(O, I/G, *k)``. Out, in the same layout,
    ``(*k, O/G, I)`` / ``(I, O/G, *k)`` with output channel ``g * I/G + c`` taken from
    ``kernel[..., c, g * O/G + o]``. Not flipped.
    """
    g = groups
    if layout == "channels_last":
        *k, ig, o = kernel.shape
        w = kernel.reshape(*k, ig, g, o // g)
        w = jnp.moveaxis(w, (n, n + 1, n + 2), (n + 2, n + 1, n))  # (*k, O/G, G, I/G)
        return w.reshape(*k, o // g, g * ig)
    o, ig, *k = kernel.shape
    w = kernel.reshape(g, o // g, ig, *k)
    w = jnp.swapaxes(w, 1, 2)  # (G, I/G, O/G, *k)
    return w.reshape(g * ig, o // g, *k)


def _phase_plan(out_size, in_size, k, s, d, lo):
    """Per-phase stride-1 conv parameters of a 1-D transposed conv.

    Output ``m = q * s + p`` receives ``dy[j] * K[t]`` for ``j * s + t * d = m + lo``.
    With ``g = gcd(s, d)`` the taps of phase ``p`` are ``t = t0 + u * (s / g)`` and read
    ``dy[q + c - u * (d / g)]``: a stride-1 correlation with the flipped sub-kernel
    ``K[t0::s/g]`` (``ku`` taps) dilated by ``d / g``. Returns ``(q_max, plans)``, one
    ``(t0, ku, s / g, d / g, (low, high))`` per phase (None where no tap lands), every
    phase computing ``q_max = ceil(out / s)`` outputs (the surplus is sliced off).
    """
    q_max = -(-out_size // s)
    gcd = math.gcd(s, d)
    s_t, d_t = s // gcd, d // gcd
    plans = []
    for p in range(s):
        t0 = next((t for t in range(s_t) if (t * d - p - lo) % s == 0), None)
        if t0 is None or t0 >= k:
            plans.append(None)
            continue
        c = (p + lo - t0 * d) // s
        ku = -(-(k - t0) // s_t)
        low = (ku - 1) * d_t - c
        high = q_max + (ku - 1) * d_t - in_size - low
        plans.append((t0, ku, s_t, d_t, (low, high)))
    return q_max, plans


def _transpose_non_overlapping(dy, kernel, n, layout, precision, preferred_element_type):
    """Transposed conv with ``kernel_size == stride`` and no padding (U-Net's up-conv).

    Every input pixel writes its own ``k``-sized output block,
    ``y[s * q + t] = dy[q] @ K[t]^T``, so the whole op is one matmul
    ``(N * prod(q), O) @ (O, prod(k) * C)`` and a depth-to-space reshape; its gradients
    are matmuls too. ``kernel`` is the forward conv's kernel (HWIO / OIHW).
    """
    if layout == "channels_first":
        dy = jnp.moveaxis(dy, 1, -1)
        kernel = jnp.moveaxis(kernel, (0, 1), (-1, -2))  # OIHW -> HWIO
    # (N, *q, O) . (*k, C, O) over O -> (N, *q, *k, C)
    y = lax.dot_general(dy, kernel, (((n + 1,), (n + 1,)), ((), ())), precision=precision,
                        preferred_element_type=preferred_element_type)
    perm = [0, *itertools.chain.from_iterable((1 + i, n + 1 + i) for i in range(n)), 2 * n + 1]
    y = jnp.transpose(y, perm)
    shape = (y.shape[0], *(y.shape[1 + 2 * i] * y.shape[2 + 2 * i] for i in range(n)), y.shape[-1])
    y = y.reshape(shape)
    return jnp.moveaxis(y, -1, 1) if layout == "channels_first" else y


def _conv_transpose_core(dy, kernel, out_sp, s, pads, d, groups, layout, n, precision,
                         preferred_element_type):
    """``dx`` of ``conv(x, kernel, stride=s, padding=pads, dilation=d, groups)`` given ``dy``.

    ``kernel`` is the forward conv's kernel (conv layout); ``out_sp`` is ``x``'s spatial
    shape. This is transposed convolution; both public ops call it.
    """
    in_sp = _spatial(dy.shape, n, layout)
    if (groups == 1 and _kernel_dims(kernel.shape, n, layout)[0] == tuple(s)
            and all(dd == 1 for dd in d) and all(p == (0, 0) for p in pads)
            and tuple(out_sp) == tuple(i * ss for i, ss in zip(in_sp, s))):
        return _transpose_non_overlapping(dy, kernel, n, layout, precision, preferred_element_type)
    w = _transpose_kernel(kernel, n, layout, groups)
    k_axes = _kernel_axes(n, layout)
    k = tuple(w.shape[a] for a in k_axes)
    dn = conv_dimension_numbers(n, layout)
    if math.prod(s) > _MAX_PHASES:
        # Too many phases to compile quickly: one stride-1 conv of dy with its zeros
        # inserted by lax.pad (interior padding). Still far faster to differentiate
        # than lhs_dilation, though each multiply-by-zero is paid.
        config = [(0, 0, 0)] * dy.ndim
        for a, o, i, kk, ss, dd, (lo, _) in zip(
                spatial_axes(dy.ndim, n, layout), out_sp, in_sp, k, s, d, pads):
            config[a] = (dd * (kk - 1) - lo, o - (i - 1) * ss - 1 + lo, ss - 1)
        dy = lax.pad(dy, jnp.zeros((), dy.dtype), config)
        return lax.conv_general_dilated(
            dy, jnp.flip(w, axis=k_axes), (1,) * n, ((0, 0),) * n, rhs_dilation=d,
            dimension_numbers=dn, feature_group_count=groups, precision=precision,
            preferred_element_type=preferred_element_type,
        )
    plans = [_phase_plan(o, i, kk, ss, dd, lo)
             for o, i, kk, ss, dd, (lo, _) in zip(out_sp, in_sp, k, s, d, pads)]
    q_max = tuple(p[0] for p in plans)
    n_batch = dy.shape[0]
    c_out = w.shape[0] if layout == "channels_first" else w.shape[-1]
    out_dtype = preferred_element_type or jnp.result_type(dy, w)
    phases = []
    for combo in itertools.product(*[p[1] for p in plans]):
        if any(c is None for c in combo):
            shape = (n_batch, *q_max, c_out) if layout == "channels_last" else (n_batch, c_out, *q_max)
            phases.append(jnp.zeros(shape, out_dtype))
            continue
        idx = [slice(None)] * w.ndim
        for a, (t0, _, s_t, _, _) in zip(k_axes, combo):
            idx[a] = slice(t0, None, s_t)
        sub = jnp.flip(w[tuple(idx)], axis=k_axes)
        phases.append(lax.conv_general_dilated(
            dy, sub, (1,) * n, [c[4] for c in combo], rhs_dilation=[c[3] for c in combo],
            dimension_numbers=dn, feature_group_count=groups, precision=precision,
            preferred_element_type=preferred_element_type,
        ))
    if len(phases) == 1:
        y = phases[0]
    else:
        y = jnp.stack(phases).reshape(*s, *phases[0].shape)
        # (*s, N, *q, C) -> (N, q1, s1, q2, s2, ..., C), then merge each (q, s) pair.
        sp = spatial_axes(n + 2, n, layout)
        ch = channel_axis(n + 2, n, layout)
        perm = [n]
        for i in range(n + 2):
            if i in sp:
                j = sp.index(i)
                perm += [n + i, j]
            elif i == ch:
                perm.append(n + i)
        y = jnp.transpose(y, perm)
        shape = [n_batch]
        for i in range(n + 2):
            if i in sp:
                shape.append(q_max[sp.index(i)] * s[sp.index(i)])
            elif i == ch:
                shape.append(c_out)
        y = y.reshape(shape)
    if tuple(_spatial(y.shape, n, layout)) != tuple(out_sp):
        idx = [slice(None)] * y.ndim
        for a, o in zip(spatial_axes(y.ndim, n, layout), out_sp):
            idx[a] = slice(0, o)
        y = y[tuple(idx)]
    return y


def conv_transpose(x, kernel, bias=None, *, stride=1, padding=0, output_padding=0,
                   dilation=1, groups=1, layout="channels_last", precision=None,
                   preferred_element_type=None):
    """Transposed convolution, as ``torch.nn.functional.conv_transpose{1,2,3}d``.

    The gradient of :func:`conv` with respect to its input: ``padding`` is the padding
    of that forward conv. Computed as ``prod(stride)`` stride-1 convolutions (one per
    output phase), never multiplying inserted zeros.

    Args:
      x: ``(N, *spatial, C_in)`` (channels_last) or ``(N, C_in, *spatial)``
        (channels_first); the N axis may be left out.
      kernel: ``(C_in, C_out // groups, *k)`` (channels_first, PyTorch's weight) or
        ``(*k, C_in, C_out // groups)`` (channels_last).
      bias: ``(C_out,)`` or None.
      stride, dilation: int or tuple of ``n`` ints, >= 1.
      padding: int, tuple, ``(low, high)`` pairs or ``"valid"``.
      output_padding: int or tuple, extra size on the high side; each must be smaller
        than its stride or its dilation.
      groups: must divide ``C_in``.
      layout, precision, preferred_element_type: as :func:`conv`.

    Returns:
      ``(N, *out, C_out)`` (or channels_first), per dim
      ``out = (in - 1) * stride - lo - hi + dilation * (k - 1) + output_padding + 1``.

    >>> conv_transpose(jnp.ones((1, 16, 16, 8)), jnp.ones((4, 4, 8, 3)), stride=2, padding=1).shape
    (1, 32, 32, 3)
    """
    op = "conv_transpose"
    layout, n, batched, x, kernel, s, d, g, c_in = _prologue(
        op, x, kernel, stride, dilation, groups, layout)
    op_pad = ntuple(output_padding, n, "output_padding", op, min_value=0)
    check_output_padding(op_pad, s, d, op)
    if layout == "channels_last":
        k, kc_in, c_out_g = tuple(kernel.shape[:n]), kernel.shape[n], kernel.shape[n + 1]
        conv_kernel = jnp.swapaxes(kernel, n, n + 1)  # (*k, C_out/G, C_in): HWIO
    else:
        kc_in, c_out_g, k = kernel.shape[0], kernel.shape[1], tuple(kernel.shape[2:])
        conv_kernel = kernel  # (C_in, C_out/G, *k) is OIHW of the forward conv
    if c_in % g:
        raise ValueError(
            f"{op}: groups must divide the input channels, got groups={g} for C_in={c_in}"
        )
    if kc_in != c_in:
        raise ValueError(
            f"{op}: kernel in-channels must equal the input channels C_in={c_in}, got "
            f"{kc_in} (kernel.shape={tuple(kernel.shape)}, layout={layout!r})"
        )
    pads = resolve_padding(padding, n, op, allowed_strings=("valid",))
    in_sp = _spatial(x.shape, n, layout)
    if 0 in in_sp:  # PyTorch refuses too; output_padding alone would invent an output
        raise ValueError(f"{op}: x must have non-empty spatial dims, got x.shape={tuple(x.shape)}")
    out_sp = tuple(
        (i - 1) * ss - lo - hi + dd * (kk - 1) + oo + 1
        for i, kk, ss, dd, oo, (lo, hi) in zip(in_sp, k, s, d, op_pad, pads)
    )
    if any(o <= 0 for o in out_sp):
        raise ValueError(
            f"{op}: padding must leave a positive output size, got padding={padding!r} "
            f"giving output {out_sp}"
        )
    check_size(op, "stride, dilation and output_padding",
               f"stride={s}, dilation={d}, output_padding={op_pad}", out_sp, "output")
    y = _conv_transpose_core(x, conv_kernel, out_sp, s, pads, d, g, layout, n, precision,
                             preferred_element_type)
    y = _add_bias(op, y, bias, c_out_g * g, n, layout)
    return y if batched else y[0]


# --------------------------------------------------------------------------- gradients


def _grad_setup(op, dy, kernel_shape, layout, n, stride, dilation, groups):
    layout = check_layout(layout, op)
    s = ntuple(stride, n, "stride", op)
    d = ntuple(dilation, n, "dilation", op)
    g = check_int(groups, "groups", op)
    k, k_in, c_out = _kernel_dims(kernel_shape, n, layout)
    batched = check_rank(dy, n, op, "kernel")
    c_dy = dy.shape[channel_axis(dy.ndim, n, layout)]
    if c_dy != c_out:
        raise ValueError(
            f"{op}: dy channels must equal the kernel's output channels C_out={c_out}, "
            f"got {c_dy} (dy.shape={tuple(dy.shape)})"
        )
    _check_conv_channels(op, k_in * g, kernel_shape, n, layout, g)
    return layout, s, d, g, k, k_in * g, batched


def _check_dy_shape(op, dy_sp, in_sp, k, s, d, pads, name):
    expected = tuple(
        window_output_size(i, kk, ss, dd, lo, hi)
        for i, kk, ss, dd, (lo, hi) in zip(in_sp, k, s, d, pads)
    )
    if tuple(dy_sp) != expected:
        raise ValueError(
            f"{op}: dy spatial shape must be the conv output shape {expected} for "
            f"{name} spatial shape {tuple(in_sp)}, got {tuple(dy_sp)}"
        )


def conv_input_grad(dy, kernel, input_shape, *, stride=1, padding=0, dilation=1, groups=1,
                    layout="channels_last"):
    """Gradient of :func:`conv` with respect to ``x``, written as a convolution.

    ``dx`` is the full convolution of ``dy`` (dilated by the stride) with the flipped
    kernel, cropped by the forward padding: the transposed convolution that
    :func:`conv_transpose` computes. Equal to ``jax.vjp(conv, x, ...)`` on ``dy``.

    Args:
      dy: ``(N, *out, C_out)`` or ``(N, C_out, *out)``; the N axis may be left out.
      kernel: the forward conv's kernel, layout as in :func:`conv`.
      input_shape: the shape of ``x``: full (``(N, *spatial, C_in)`` /
        ``(N, C_in, *spatial)``, or without N for unbatched) or spatial only.
      stride, padding, dilation, groups, layout: of the forward conv (every padding
        form of :func:`conv`).

    Returns:
      ``dx``, shaped like ``x``.

    >>> conv_input_grad(jnp.ones((1, 4, 4, 8)), jnp.ones((3, 3, 2, 8)), (1, 8, 8, 2),
    ...                 stride=2, padding=1).shape
    (1, 8, 8, 2)
    """
    op = "conv_input_grad"
    n = _num_spatial(kernel, op)
    dy, kernel = _as_arrays(dy, kernel)
    check_dtype(dy, op, "number", "dy")
    layout, s, d, g, k, c_in, batched = _grad_setup(
        op, dy, kernel.shape, layout, n, stride, dilation, groups)
    in_sp = _input_spatial(op, input_shape, n, layout, batched, dy, c_in)
    check_size(op, "input_shape", f"input_shape={input_shape!r}", in_sp, "output")
    if not batched:
        dy = dy[None]
    pads = resolve_padding(padding, n, op, input_shape=in_sp, kernel_size=k, stride=s, dilation=d)
    _check_dy_shape(op, _spatial(dy.shape, n, layout), in_sp, k, s, d, pads, "input_shape")
    dx = _conv_transpose_core(dy, kernel, in_sp, s, pads, d, g, layout, n, None, None)
    return dx if batched else dx[0]


def _input_spatial(op, input_shape, n, layout, batched, dy, c_in):
    shape = tuple(getattr(input_shape, "shape", input_shape)) if not isinstance(
        input_shape, (int, str)) else input_shape
    if isinstance(shape, (int, str)) or len(shape) not in (n, n + 1, n + 2):
        raise ValueError(
            f"{op}: input_shape must be x's shape ({n + 2} or {n + 1} dims) or its {n} "
            f"spatial sizes, got {input_shape!r}"
        )
    shape = ntuple(shape, len(shape), "input_shape", op)
    if len(shape) == n:
        return shape
    full_batched = len(shape) == n + 2
    if full_batched != batched:
        raise ValueError(
            f"{op}: input_shape must be batched exactly when dy is, got input_shape="
            f"{shape} for dy.shape={tuple(dy.shape)}"
        )
    if shape[channel_axis(len(shape), n, layout)] != c_in or (
            batched and shape[0] != dy.shape[0]):
        raise ValueError(
            f"{op}: input_shape must have C_in={c_in} channels and dy's batch size, got "
            f"input_shape={shape} for dy.shape={tuple(dy.shape)}"
        )
    return _spatial(shape, n, layout)


def conv_kernel_grad(x, dy, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1,
                     layout="channels_last"):
    """Gradient of :func:`conv` with respect to ``kernel``, written as a convolution.

    ``dK[o, c, t] = sum_{b, j} dy[b, o, j] * x_pad[b, c, j * stride + t * dilation]``:
    a cross-correlation of the (padded) input with ``dy`` dilated by the stride, the
    batch axis contracted like a channel axis (channel groups become batch groups).
    Equal to ``jax.vjp(conv, kernel, ...)`` on ``dy``.

    Args:
      x: the forward input, ``(N, *spatial, C_in)`` or ``(N, C_in, *spatial)``; the N
        axis may be left out (then also in ``dy``).
      dy: ``(N, *out, C_out)`` or ``(N, C_out, *out)``.
      kernel_shape: the full kernel shape, ``(*k, C_in // groups, C_out)`` or
        ``(C_out, C_in // groups, *k)``.
      stride, padding, dilation, groups, layout: of the forward conv.

    Returns:
      ``dkernel`` of shape ``kernel_shape``.

    >>> conv_kernel_grad(jnp.ones((1, 8, 8, 2)), jnp.ones((1, 4, 4, 8)), (3, 3, 2, 8),
    ...                  stride=2, padding=1).shape
    (3, 3, 2, 8)
    """
    op = "conv_kernel_grad"
    if isinstance(kernel_shape, (int, str)) or len(tuple(kernel_shape)) < 3:
        raise ValueError(
            f"{op}: kernel_shape must be the full kernel shape (at least 3 dims), got "
            f"{kernel_shape!r}"
        )
    kernel_shape = tuple(kernel_shape)
    n = len(kernel_shape) - 2
    kernel_shape = ntuple(kernel_shape, n + 2, "kernel_shape", op)
    x, dy = _as_arrays(x, dy)
    check_dtype(x, op, "number")
    layout, s, d, g, k, c_in, batched = _grad_setup(
        op, dy, kernel_shape, layout, n, stride, dilation, groups)
    if check_rank(x, n, op, "kernel_shape") != batched:
        raise ValueError(
            f"{op}: x must be batched exactly when dy is, got x.shape={tuple(x.shape)} "
            f"for dy.shape={tuple(dy.shape)}"
        )
    if not batched:
        x, dy = x[None], dy[None]
    cx = x.shape[channel_axis(x.ndim, n, layout)]
    if cx != c_in or x.shape[0] != dy.shape[0]:
        raise ValueError(
            f"{op}: x must have C_in={c_in} channels and dy's batch size, got "
            f"x.shape={tuple(x.shape)} for dy.shape={tuple(dy.shape)}"
        )
    in_sp = _spatial(x.shape, n, layout)
    pads = resolve_padding(padding, n, op, input_shape=in_sp, kernel_size=k, stride=s, dilation=d)
    _check_fits(op, in_sp, k, s, d, pads, kernel_shape)
    out_sp = _spatial(dy.shape, n, layout)
    _check_dy_shape(op, out_sp, in_sp, k, s, d, pads, "x")
    # Trim the high padding by the input tail the forward conv never read, so exactly
    # k taps come out: (in + lo + hi) - ((out - 1) * s + d * (k - 1) + 1).
    kpads = tuple(
        (lo, hi - (i + lo + hi - (o - 1) * ss - dd * (kk - 1) - 1))
        for i, o, kk, ss, dd, (lo, hi) in zip(in_sp, out_sp, k, s, d, pads)
    )
    sp = tuple(range(1, n + 1)) if layout == "channels_last" else tuple(range(2, n + 2))
    c_ax = n + 1 if layout == "channels_last" else 1
    if layout == "channels_last":
        out_spec = (n, n + 1) + tuple(range(n))  # kernel (*k, I/G, O)
    else:
        out_spec = (1, 0) + tuple(range(2, n + 2))  # kernel (O, I/G, *k)
    dn = lax.ConvDimensionNumbers(
        lhs_spec=(c_ax, 0) + sp,  # x: channels play the batch, batch the features
        rhs_spec=(c_ax, 0) + sp,  # dy: out-channels are the features, batch is contracted
        out_spec=out_spec,
    )
    return lax.conv_general_dilated(
        x, dy, window_strides=d, padding=kpads, rhs_dilation=s, dimension_numbers=dn,
        batch_group_count=g,
    )
