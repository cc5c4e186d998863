"""How each convolution is computed, per platform: the one place that decides it.

Every forward convolution of the ops (``conv``, ``depthwise_conv``, ``separable_conv``,
the layers and models built on them) ends in :func:`convolve`, given a batched input,
a kernel in the layout's order (HWIO / OIHW, already flipped) and explicit zero
padding. On a GPU or TPU it is one ``lax.conv_general_dilated``, exactly what a
hand-written raw-lax program lowers to (cuDNN and the TPU compiler are tuned for it).
On a CPU, XLA:CPU's convolution kernels are slow for some shapes, and those are
written as other lax programs instead. The choice is made per platform *at lowering
time* with ``lax.platform_dependent``, never by asking ``jax.default_backend()``
while tracing: a program exported for ``("cpu", "cuda")`` carries both branches, and
the CUDA and TPU lowerings contain only the plain convolution. Shapes whose CPU
formulation is the raw conv get no ``platform_dependent`` at all.

The rule (:func:`cpu_formulation`), with the measurement behind each line
(``python -m benchmarks --suite ops``, float32, fwd+bwd, on the project's 2-core
reference machine; ``benchmarks/README.md``, the CPU report):

* ``"depthwise"`` -- ``groups == C_in > 1`` (any channel multiplier, stride, dilation,
  padding, 1-3 spatial dims, both layouts), at most ``_DEPTHWISE_MAX_TAPS`` taps:
  ``y = sum_t x_pad[window t] * w[t]``, one shifted multiply-add per kernel tap, which
  XLA fuses into one loop. Strided dims are split into their stride phases first
  (a reshape), so every window is a contiguous stride-1 slice and autodiff's input
  gradient is per-phase stride-1 pads, never a multiply by an inserted zero. XLA:CPU
  runs ``feature_group_count == C`` through a generic grouped loop and rewrites the
  kernel gradient into a dense ``C x C`` convolution (measured 18-94x PyTorch on
  MobileNetV2 / EfficientNet depthwise layers); this form is built from
  differentiable lax ops only, so both autodiff modes and ``vmap`` hold.
* ``"im2col"`` -- ``groups == 1``, every output size at most ``_IM2COL_MAX_OUT``,
  at most ``_IM2COL_MAX_TAPS`` taps: patches (one strided slice per live tap) @
  kernel. On 2x2 and 1x1 outputs XLA:CPU's convolution measured 1.3-11x slower than
  this (jit, fwd + both gradients, 3x3 kernels, 32-256 channels); on 3x3 to 56x56
  outputs it measured 0.4-2x of lax, varying run to run, so those stay on lax.
* ``"dot"`` -- a 1x1 kernel, ``groups == 1``, stride 1, no padding, no dilation,
  channels_last: one ``dot_general`` over the channel axis (a 1x1 conv is a matmul;
  XLA:CPU's 1x1 convolution's backward measured 1.2-2.3x PyTorch's while JAX's own
  2048 matmul beat PyTorch's in the same run).
* ``"lax"`` -- everything else: the raw convolution.

``_conv_im2col`` and ``_depthwise`` are the formulations; ``tests/test_lowering.py``
checks each against the raw conv (values and both autodiff modes, float64) and that
the CUDA and TPU lowerings are the raw conv's.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops._args import conv_dimension_numbers, window_output_size

# im2col: every output spatial size <= _IM2COL_MAX_OUT and <= _IM2COL_MAX_TAPS taps
# (the tap limit bounds the number of slices compiled).
_IM2COL_MAX_OUT = 2
_IM2COL_MAX_TAPS = 32
# depthwise: at most this many kernel taps (ConvNeXt's 7x7 has 49; the bound keeps
# the unrolled program small: a 5x5x5 3-D kernel has 125).
_DEPTHWISE_MAX_TAPS = 64


def cpu_formulation(x_shape, kernel_shape, s, pads, d, groups, layout, out_sp) -> str:
    """Which formulation XLA:CPU runs for this convolution (see the module docstring):
    ``"depthwise"``, ``"im2col"``, ``"dot"`` or ``"lax"``."""
    n = len(s)
    c_in = x_shape[-1] if layout == "channels_last" else x_shape[1]
    k = tuple(kernel_shape[:n]) if layout == "channels_last" else tuple(kernel_shape[2:])
    taps = math.prod(k)
    if groups > 1 and groups == c_in and taps <= _DEPTHWISE_MAX_TAPS:
        return "depthwise"
    if groups == 1 and max(out_sp) <= _IM2COL_MAX_OUT and taps <= _IM2COL_MAX_TAPS:
        return "im2col"
    if (
        groups == 1
        and taps == 1
        and layout == "channels_last"
        and set(s) == {1}
        and set(d) == {1}
        and all(p == (0, 0) for p in pads)
    ):
        return "dot"
    return "lax"


def convolve(x, kernel, s, pads, d, groups, layout, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated(x, kernel, s, pads, rhs_dilation=d, ...)`` of a batched
    ``x`` with ``kernel`` in ``layout`` (HWIO / OIHW), zero padding ``pads`` as
    ``(low, high)`` pairs; on a CPU computed as :func:`cpu_formulation` says."""
    n = len(s)
    raw = functools.partial(
        _raw,
        s=tuple(s),
        pads=tuple(pads),
        d=tuple(d),
        groups=groups,
        layout=layout,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    in_sp = x.shape[1:-1] if layout == "channels_last" else x.shape[2:]
    k = kernel.shape[:n] if layout == "channels_last" else kernel.shape[2:]
    out_sp = tuple(
        window_output_size(i, kk, ss, dd, lo, hi)
        for i, kk, ss, dd, (lo, hi) in zip(in_sp, k, s, d, pads)
    )
    form = cpu_formulation(x.shape, kernel.shape, s, pads, d, groups, layout, out_sp)
    if form == "lax":
        return raw(x, kernel)
    if form == "depthwise":
        cpu = functools.partial(
            _depthwise,
            s=tuple(s),
            pads=tuple(pads),
            d=tuple(d),
            layout=layout,
            preferred_element_type=preferred_element_type,
        )
    elif form == "im2col":
        cpu = functools.partial(
            _conv_im2col,
            stride=s,
            pads=pads,
            dilation=d,
            groups=groups,
            layout=layout,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    else:
        cpu = functools.partial(
            _conv_dot, precision=precision, preferred_element_type=preferred_element_type
        )
    # Rematerialised, the CPU branch saves only x and kernel for the backward pass, as the
    # raw conv does: reverse-mode AD then joins the branches' residuals without adding
    # zero-filled ones to the GPU/TPU program. Recomputing costs nothing measurable: what
    # the backward pass reads (windows of x, patches) are slices XLA fuses into it.
    cpu = jax.checkpoint(cpu, policy=jax.checkpoint_policies.nothing_saveable)
    return lax.platform_dependent(x, kernel, cpu=cpu, default=raw)


def _raw(x, kernel, *, s, pads, d, groups, layout, precision, preferred_element_type):
    n = len(s)
    return lax.conv_general_dilated(
        x,
        kernel,
        s,
        pads,
        rhs_dilation=d,
        dimension_numbers=conv_dimension_numbers(n, layout),
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


# --------------------------------------------------------------------------- 1x1: a matmul


def _conv_dot(x, kernel, *, precision=None, preferred_element_type=None):
    """A channels_last 1x1 conv (stride 1, no padding): ``x @ kernel[0, ..., 0]``."""
    w = kernel.reshape(kernel.shape[-2:])
    return lax.dot_general(
        x,
        w,
        (((x.ndim - 1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


# --------------------------------------------------------------------------- depthwise


def _acc_dtype(dtype):
    """Accumulate below-float32 floats in float32 (as XLA:CPU's convolution does)."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def _depthwise(x, kernel, *, s, pads, d, layout, preferred_element_type=None):
    """Depthwise conv (``groups == C_in``) of batched ``x`` as shifted multiply-adds.

    ``kernel`` is ``(*k, 1, C * m)`` (channels_last) or ``(C * m, 1, *k)``
    (channels_first); output channel ``c * m + j`` is input channel ``c`` with filter
    ``j`` (``feature_group_count`` order). Each strided spatial dim of the padded input
    is split into its ``s`` phases by a reshape (``L -> (L / s, s)``), so tap ``t``
    (offset ``p = t * d``) reads phase ``p % s`` from ``p // s`` on: a contiguous
    slice. The result is ``sum_t window_t * w[t]``, accumulated in float32 for
    narrower floats.
    """
    n = len(s)
    last = layout == "channels_last"
    out_dtype = preferred_element_type or jnp.result_type(x, kernel)
    acc = _acc_dtype(out_dtype)
    x, kernel = x.astype(acc), kernel.astype(acc)
    c = x.shape[-1] if last else x.shape[1]
    k = kernel.shape[:n] if last else kernel.shape[2:]
    m = (kernel.shape[-1] if last else kernel.shape[0]) // c
    in_sp = x.shape[1:-1] if last else x.shape[2:]
    out = tuple(
        window_output_size(i, kk, ss, dd, lo, hi)
        for i, kk, ss, dd, (lo, hi) in zip(in_sp, k, s, d, pads)
    )
    # Pad (or crop: negative pads) and round each strided dim up to a multiple of s
    # with zeros no window reads; then split it into (L / s, s).
    lengths = []
    config = [(0, 0, 0)] * x.ndim
    for j, (i, kk, ss, dd, o, (lo, hi)) in enumerate(zip(in_sp, k, s, d, out, pads)):
        length = ss * max(-(-(i + lo + hi) // ss), (dd * (kk - 1)) // ss + o)
        config[j + 1 if last else j + 2] = (lo, length - i - lo, 0)
        lengths.append(length)
    x = lax.pad(x, jnp.zeros((), acc), config)
    split = []
    for length, ss in zip(lengths, s):
        split += [length // ss, ss]
    x = x.reshape((x.shape[0], *split, c) if last else (x.shape[0], c, *split))
    # With m filters per channel the input channels are repeated m times first, so
    # every product keeps the channel axis as is (a size-1 axis there would leave the
    # reductions of the kernel gradient unvectorised: measured 7x slower).
    ch = x.ndim - 1 if last else 1
    if m > 1:
        x = jnp.repeat(x, m, axis=ch)
    first = 1 if last else 2  # the axis of q1
    y = None
    for t in itertools.product(*[range(kk) for kk in k]):
        start = [0] * x.ndim
        limit = list(x.shape)
        for j, (tt, ss, dd, o) in enumerate(zip(t, s, d, out)):
            q, r = divmod(tt * dd, ss)
            a = first + 2 * j
            start[a], limit[a] = q, q + o
            start[a + 1], limit[a + 1] = r, r + 1
        win = lax.slice(x, start, limit)
        win = win.reshape(
            [
                v
                for a, v in enumerate(win.shape)
                if not (first <= a < first + 2 * n and (a - first) % 2)
            ]
        )
        if last:  # (N, *out, C * m) * (1, ..., 1, C * m)
            term = win * kernel[(*t, 0)].reshape(*([1] * (n + 1)), c * m)
        else:
            term = win * kernel[(slice(None), 0, *t)].reshape(1, c * m, *([1] * n))
        y = term if y is None else y + term
    return y.astype(out_dtype)


# --------------------------------------------------------------------------- im2col


def _live_taps(i, k, s, d, o, lo):
    """The taps of one spatial dim that read at least one real (non-padding) element."""
    return [t for t in range(k) if any(lo <= t * d + j * s < lo + i for j in range(o))]


def _zeros_output(x, kernel, out_sp, c_out, layout, preferred_element_type):
    """The all-zero output of a conv of batched ``x`` whose every tap reads padding."""
    dtype = preferred_element_type or jnp.result_type(x, kernel)
    shape = (
        (x.shape[0], *out_sp, c_out) if layout == "channels_last" else (x.shape[0], c_out, *out_sp)
    )
    return jnp.zeros(shape, dtype)


def _conv_im2col(
    x, kernel, stride, pads, dilation, groups, layout, precision=None, preferred_element_type=None
):
    """``lax.conv_general_dilated`` as patches (one strided slice per tap) @ kernel.

    ``x`` is batched, ``pads`` are resolved ``(low, high)`` zero pads, ``kernel`` is in
    ``layout`` (HWIO / OIHW), already flipped if wanted; any number of spatial dims and
    groups. Taps that read only padding are dropped, so a 3x3 conv of a 1x1 map is one
    matmul. Autodiff stays matmul-based: the slices transpose to pads (``dx``) and the
    kernel gradient is ``patches^T @ dy``. Used on CPU for tiny output maps, where
    XLA:CPU's own convolution is several times slower (see ``_IM2COL_MAX_OUT``).
    """
    n = kernel.ndim - 2
    if layout == "channels_first":
        x = jnp.moveaxis(x, 1, -1)
        kernel = jnp.moveaxis(kernel, (0, 1), (-1, -2))  # OIHW -> HWIO
    k, c_in = kernel.shape[:n], x.shape[-1]
    in_sp = x.shape[1:-1]
    out = tuple(
        window_output_size(i, kk, ss, dd, lo, hi)
        for i, kk, ss, dd, (lo, hi) in zip(in_sp, k, stride, dilation, pads)
    )
    # Per dim, the taps that read at least one real (non-padding) element.
    live = [
        _live_taps(i, kk, ss, dd, o, lo)
        for i, kk, ss, dd, o, (lo, _) in zip(in_sp, k, stride, dilation, out, pads)
    ]
    x = lax.pad(
        x, jnp.zeros((), x.dtype), [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads], (0, 0, 0)]
    )
    taps = list(itertools.product(*live))
    if not taps:  # every tap reads padding only (large padding, dilation): zeros
        return _zeros_output(x, kernel, out, kernel.shape[-1], layout, preferred_element_type)
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
            w.reshape(len(taps) * c_in, c_out),
            (((n + 1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    else:
        patches = patches.reshape(*patches.shape[:-1], groups, c_in // groups)
        w = w.reshape(len(taps), c_in // groups, groups, c_out // groups)
        y = jnp.einsum(
            "...tgc,tcgo->...go",
            patches,
            w,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
        y = y.reshape(*y.shape[:-2], c_out)
    return jnp.moveaxis(y, -1, 1) if layout == "channels_first" else y
