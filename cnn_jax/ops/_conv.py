"""The convolution family: conv, depthwise and separable conv, the kernel gradient.

One function per op serves 1-D, 2-D and 3-D (``n = kernel.ndim - 2``) in both layouts.
Every argument is checked once, at trace time, by one checker (``_conv_spec``) that
returns a hashable ``_ConvSpec`` record of the call; the compute reads its fields.
A ``_ConvSpec`` always describes a *forward* convolution, so transposed convolution
and ``conv_input_grad`` (``ops/_conv_transpose.py``: the input gradient of the conv
they describe) use the same record and the same helpers.

Kernel taps that read only zero padding are sliced off first (``_simplify_window``);
the convolution itself is ``ops/_lowering.py``'s ``convolve``: one
``lax.conv_general_dilated`` on a GPU or TPU, lowered exactly as raw lax, and on a CPU
the formulation its measured rule picks for the shape (shifted multiply-adds for
depthwise convs, patches @ kernel for tiny outputs, a matmul for 1x1 convs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from cnn_jax._checks import (
    PADDING_MODES,
    Pads,
    check_bool,
    check_choice,
    check_int,
    check_layout,
    ntuple,
    resolve_padding,
)
from cnn_jax.ops._args import (
    channel_axis,
    check_dtype,
    check_ndim,
    check_padded_size,
    check_rank,
    spatial_axes,
    window_output_size,
)
from cnn_jax.ops._lowering import _live_taps, _zeros_output, convolve
from cnn_jax.ops._pad import pad_spatial

# --------------------------------------------------------------------------- the record


class _ConvSpec(NamedTuple):
    """Static description of one forward convolution of a *batched* x (hashable).

    ``in_sp`` is x's spatial shape, ``out`` the output's; ``c_in``/``c_out`` count
    channels of x and of the output; ``pads`` are resolved ``(low, high)`` pairs.
    """

    layout: str
    batched: bool  # whether the caller's array had its N axis
    k: tuple[int, ...]
    s: tuple[int, ...]
    d: tuple[int, ...]
    groups: int
    c_in: int
    c_out: int
    in_sp: tuple[int, ...] = ()
    pads: Pads = ()
    out: tuple[int, ...] = ()
    padding_mode: str = "zeros"
    flip: bool = False
    precision: object = None
    preferred_element_type: object = None


# --------------------------------------------------------------------------- checks


def _num_spatial(kernel, op: str, name: str = "kernel") -> int:
    return check_ndim(kernel, 3, "(kernel_size + 2 channel dims)", name, op) - 2


def _as_arrays(*arrays):
    arrays = [jnp.asarray(a) for a in arrays]
    dtype = jnp.result_type(*arrays)
    return [a.astype(dtype) for a in arrays]


def _start(op, x, kernel, layout):
    """The checks every conv and transposed conv starts with: ``(x batched, kernel,
    n, batched)``, both arrays in one dtype (a number, not bool)."""
    check_layout(layout, op)
    n = _num_spatial(kernel, op)
    batched = check_rank(x, n, "kernel", op)
    x, kernel = _as_arrays(x, kernel)
    check_dtype(x, "number", "x", op)
    return (x if batched else x[None]), kernel, n, batched


def _kernel_dims(shape, n: int, layout: str):
    """``(kernel_size, in_per_group, out)`` of a conv kernel (HWIO / OIHW)."""
    if layout == "channels_last":
        return tuple(shape[:n]), shape[n], shape[n + 1]
    return tuple(shape[2:]), shape[1], shape[0]


def _check_conv_channels(c_in, kernel_shape, n, layout, groups, op, name="kernel"):
    """Checks a conv kernel against ``c_in`` input channels; returns ``(k, c_out)``."""
    k, k_in, c_out = _kernel_dims(kernel_shape, n, layout)
    if c_in % groups:
        raise ValueError(
            f"{op}: groups must divide the input channels, got groups={groups} for C_in={c_in}"
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
        raise ValueError(
            f"{op}: {name} spatial sizes must be >= 1, got {name}.shape={tuple(kernel_shape)}"
        )
    return k, c_out


def _check_fits(spec: _ConvSpec, kernel_shape, op):
    """The output size of ``spec``'s conv, or an error naming the kernel."""
    out = tuple(
        window_output_size(i, kk, ss, dd, lo, hi)
        for i, kk, ss, dd, (lo, hi) in zip(spec.in_sp, spec.k, spec.s, spec.d, spec.pads)
    )
    if any(o <= 0 for o in out):
        eff = tuple(dd * (kk - 1) + 1 for kk, dd in zip(spec.k, spec.d))
        padded = tuple(i + lo + hi for i, (lo, hi) in zip(spec.in_sp, spec.pads))
        raise ValueError(
            f"{op}: kernel (effective size {eff} with dilation {spec.d}) must not exceed "
            f"the padded input {padded}, got kernel.shape={tuple(kernel_shape)}"
        )
    return out


def _check_bias(bias, c_out, op):
    if bias is not None and tuple(jnp.shape(bias)) != (c_out,):
        raise ValueError(f"{op}: bias must have shape ({c_out},), got {tuple(jnp.shape(bias))}")


def _add_bias(y, bias, c_out, layout):
    """``y`` (batched) plus a checked ``(C_out,)`` bias on its channel axis."""
    if bias is None:
        return y
    shape = [1] * y.ndim
    shape[channel_axis(y.ndim, y.ndim - 2, layout)] = c_out
    return y + jnp.asarray(bias).astype(y.dtype).reshape(shape)


def _kernel_axes(n, layout):
    """Spatial axes of a kernel: ``(*k, I, O)`` or ``(O, I, *k)``."""
    return tuple(range(n)) if layout == "channels_last" else tuple(range(2, n + 2))


def _spatial(shape, n, layout):
    return tuple(shape[a] for a in spatial_axes(len(shape), n, layout))


def _conv_spec(
    op,
    x,
    kernel,
    bias,
    *,
    stride,
    padding,
    dilation,
    groups,
    padding_mode,
    flip,
    layout,
    precision,
    preferred_element_type,
):
    """Check every argument of a conv once: ``(x batched, kernel, _ConvSpec)``.

    ``groups=None`` means one group per input channel (depthwise).
    """
    padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode", op)
    flip = check_bool(flip, "flip", op)
    x, kernel, n, batched = _start(op, x, kernel, layout)
    s = ntuple(stride, n, "stride", op)
    d = ntuple(dilation, n, "dilation", op)
    c_in = x.shape[channel_axis(x.ndim, n, layout)]
    g = c_in if groups is None else check_int(groups, "groups", op)
    k, c_out = _check_conv_channels(c_in, kernel.shape, n, layout, g, op)
    in_sp = _spatial(x.shape, n, layout)
    if 0 in in_sp:  # PyTorch refuses too; padding alone would invent an output
        raise ValueError(f"{op}: x must have non-empty spatial dims, got x.shape={tuple(x.shape)}")
    pads = resolve_padding(padding, n, op, input_shape=in_sp, kernel_size=k, stride=s, dilation=d)
    check_padded_size(in_sp, pads, padding, op)
    spec = _ConvSpec(
        layout,
        batched,
        k,
        s,
        d,
        g,
        c_in,
        c_out,
        in_sp,
        pads,
        padding_mode=padding_mode,
        flip=flip,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    spec = spec._replace(out=_check_fits(spec, kernel.shape, op))
    _check_bias(bias, c_out, op)
    return x, kernel, spec


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
    x, kernel, spec = _conv_spec(
        "conv",
        x,
        kernel,
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
        flip=flip,
        layout=layout,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return _conv("conv", x, kernel, bias, spec)


def _conv(op, x, kernel, bias, spec: _ConvSpec):
    """The convolution ``spec`` describes, of the batched ``x``; unbatched as given."""
    n, layout, s, d, pads, k = len(spec.k), spec.layout, spec.s, spec.d, spec.pads, spec.k
    axes = spatial_axes(x.ndim, n, layout)
    if spec.padding_mode != "zeros":
        x = pad_spatial(x, pads, spec.padding_mode, axes, "padding_mode", op)
        pads = ((0, 0),) * n
    if spec.flip:
        kernel = jnp.flip(kernel, axis=_kernel_axes(n, layout))
    simple = _simplify_window(x, kernel, k, s, d, pads, spec.out, axes, layout)
    if simple is None:  # every tap of some dim reads padding only: zeros, and the bias
        y = _zeros_output(x, kernel, spec.out, spec.c_out, layout, spec.preferred_element_type)
        y = _add_bias(y, bias, spec.c_out, layout)
        return y if spec.batched else y[0]
    x, kernel, pads, k, s, d = simple
    x, pads = _explicit_low_pads(x, k, s, d, pads, axes)
    y = convolve(
        x, kernel, s, pads, d, spec.groups, layout, spec.precision, spec.preferred_element_type
    )
    y = _add_bias(y, bias, spec.c_out, layout)
    return y if spec.batched else y[0]


def _simplify_window(x, kernel, k, s, d, pads, out_sp, axes, layout):
    """The same convolution with no tap reading only zero padding, per spatial dim.

    Leading and trailing taps that read only padding contribute nothing: they are
    sliced off the kernel, with the padding they would have read (where the kept taps
    start past the low padding or end before the real input does, the input is
    cropped instead of padded negatively). A dim with one output then reads exactly
    every ``d``-th element of what is left: those are sliced out, and the dim becomes
    an undilated, unstrided window over its whole input.

    This saves the multiplies, and keeps XLA:CPU from aborting: its algebraic
    simplifier fails a check ("Window dimensions do not match RHS shape") compiling
    the input gradient of some convs where one dim has a single output whose window
    reads padding or is dilated, and another a stride (e.g. a 3x4 input, kernel 2x2,
    dilation (2, 1), stride 2, padding ((0, 0), (1, 1)); or a 1x4 input, kernel 3x2,
    padding 1, stride (1, 2)). Ordinary convs have neither and are returned untouched,
    so they lower exactly as raw ``lax`` does.

    Returns ``(x, kernel, pads, k, s, d)``, or None when every tap of some dim reads
    only padding (the convolution is zero).
    """
    spans = []
    for i, kk, ss, dd, o, (lo, _) in zip(_spatial(x.shape, len(k), layout), k, s, d, out_sp, pads):
        live = _live_taps(i, kk, ss, dd, o, lo)
        if not live:
            return None
        spans.append((live[0], live[-1]))
    if all(
        t0 == 0 and t1 == kk - 1 and not (o == 1 and (dd > 1 or ss > 1))
        for (t0, t1), kk, o, dd, ss in zip(spans, k, out_sp, d, s)
    ):
        return x, kernel, pads, k, s, d
    new_pads, new_k, new_s, new_d = [], [], [], []
    for (t0, t1), ax, kax, ss, dd, o, (lo, _) in zip(
        spans, axes, _kernel_axes(len(k), layout), s, d, out_sp, pads
    ):
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
        if o == 1 and lo == hi == 0:  # the window is the input (every d-th element)
            x = lax.slice_in_dim(x, 0, x.shape[ax], stride=dd, axis=ax)
            ss, dd = 1, 1
        new_pads.append((lo, hi))
        new_k.append(t1 - t0 + 1)
        new_s.append(ss)
        new_d.append(dd)
    return x, kernel, tuple(new_pads), tuple(new_k), tuple(new_s), tuple(new_d)


def _explicit_low_pads(x, k, s, d, pads, axes):
    """Pad ``x`` itself on the low side of each strided dim whose low padding reaches
    the last tap of the first window (``lo >= d * (k - 1)``), and give the conv none.

    JAX transposes such a dim to a base-dilated conv with no low padding, and XLA:CPU's
    algebraic simplifier aborts compiling it beside many other dims (e.g. a 4-wide dim
    with kernel 2, stride 2, padding 1 next to a 3-wide one with kernel 3, stride 2,
    padding 1: 63 of 210 second dims in a search). With the padding made explicit
    nothing aborts (the same search). Ordinary convs (a 1x1 stride-2 shortcut has
    ``lo = 0``; 3x3 and 4x4 stride-2 layers have ``lo < d * (k - 1)``) are untouched.
    """
    low = [
        lo if ss > 1 and lo > 0 and lo >= dd * (kk - 1) else 0
        for kk, ss, dd, (lo, _) in zip(k, s, d, pads)
    ]
    if not any(low):
        return x, pads
    config = [(0, 0, 0)] * x.ndim
    for a, lo in zip(axes, low):
        config[a] = (lo, 0, 0)
    x = lax.pad(x, jnp.zeros((), x.dtype), config)
    return x, tuple((lo - e, hi) for e, (lo, hi) in zip(low, pads))


def depthwise_conv(
    x,
    kernel,
    bias=None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    padding_mode="zeros",
    layout="channels_last",
    precision=None,
):
    """Depthwise convolution: ``conv`` with ``groups = C_in``.

    Args:
      x: ``(N, *spatial, C_in)`` or ``(N, C_in, *spatial)``, N optional.
      kernel: ``(*k, 1, C_in * m)`` (channels_last) or ``(C_in * m, 1, *k)``
        (channels_first): ``m`` filters per input channel.
      bias, stride, padding, dilation, padding_mode, layout, precision: as in
        :func:`conv`.

    Returns:
      ``(N, *out, C_in * m)`` (or channels_first), sizes as :func:`conv`.

    >>> depthwise_conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 8)), padding=1).shape
    (1, 8, 8, 8)
    """
    op = "depthwise_conv"
    x, kernel, spec = _conv_spec(
        op,
        x,
        kernel,
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=None,
        padding_mode=padding_mode,
        flip=False,
        layout=layout,
        precision=precision,
        preferred_element_type=None,
    )
    return _conv(op, x, kernel, bias, spec)


def separable_conv(
    x,
    depthwise_kernel,
    pointwise_kernel,
    bias=None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    padding_mode="zeros",
    layout="channels_last",
    precision=None,
):
    """Depthwise-separable convolution: a depthwise conv, then a 1x1 conv.

    Args:
      x: ``(N, *spatial, C_in)`` or ``(N, C_in, *spatial)``, N optional.
      depthwise_kernel: as :func:`depthwise_conv`'s kernel, ``C_mid = C_in * m`` out.
      pointwise_kernel: ``(*ones, C_mid, C_out)`` (channels_last) or
        ``(C_out, C_mid, *ones)`` (channels_first).
      bias: ``(C_out,)`` or None, added after the pointwise conv.
      stride, padding, dilation, padding_mode: of the depthwise conv.
      layout, precision: as in :func:`conv`, for both convs.

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
    check_rank(x, n, "depthwise_kernel", op)
    x, kernel, spec = _conv_spec(
        op,
        x,
        depthwise_kernel,
        None,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=None,
        padding_mode=padding_mode,
        flip=False,
        layout=layout,
        precision=precision,
        preferred_element_type=None,
    )
    h = _conv(op, x, kernel, None, spec)
    h, kernel, spec = _conv_spec(
        op,
        h,
        pointwise_kernel,
        bias,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        padding_mode="zeros",
        flip=False,
        layout=layout,
        precision=precision,
        preferred_element_type=None,
    )
    return _conv(op, h, kernel, bias, spec)


# --------------------------------------------------------------------------- gradients


def _grad_spec(op, dy, kernel_shape, n, stride, dilation, groups, layout) -> _ConvSpec:
    """The forward conv that ``dy`` is the output gradient of, as far as ``dy`` and
    the kernel tell it; the caller adds its input size, padding and output size."""
    check_layout(layout, op)
    s = ntuple(stride, n, "stride", op)
    d = ntuple(dilation, n, "dilation", op)
    g = check_int(groups, "groups", op)
    k, k_in, c_out = _kernel_dims(kernel_shape, n, layout)
    batched = check_rank(dy, n, "kernel", op)
    c_dy = dy.shape[channel_axis(dy.ndim, n, layout)]
    if c_dy != c_out:
        raise ValueError(
            f"{op}: dy channels must equal the kernel's output channels C_out={c_out}, "
            f"got {c_dy} (dy.shape={tuple(dy.shape)})"
        )
    _check_conv_channels(k_in * g, kernel_shape, n, layout, g, op)
    return _ConvSpec(layout, batched, k, s, d, g, k_in * g, c_out)


def _check_dy_shape(spec: _ConvSpec, name, op):
    """``spec.out`` (dy's spatial shape) must be the output shape of ``spec``'s conv."""
    expected = tuple(
        window_output_size(i, kk, ss, dd, lo, hi)
        for i, kk, ss, dd, (lo, hi) in zip(spec.in_sp, spec.k, spec.s, spec.d, spec.pads)
    )
    if tuple(spec.out) != expected:
        raise ValueError(
            f"{op}: dy spatial shape must be the conv output shape {expected} for "
            f"{name} spatial shape {tuple(spec.in_sp)}, got {tuple(spec.out)}"
        )


def conv_kernel_grad(
    x, dy, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1, layout="channels_last"
):
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
    x, dy, spec = _kernel_grad_spec(
        op,
        x,
        dy,
        kernel_shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
    )
    n, layout = len(spec.k), spec.layout
    # Trim the high padding by the input tail the forward conv never read, so exactly
    # k taps come out: (in + lo + hi) - ((out - 1) * s + d * (k - 1) + 1).
    kpads = tuple(
        (lo, hi - (i + lo + hi - (o - 1) * ss - dd * (kk - 1) - 1))
        for i, o, kk, ss, dd, (lo, hi) in zip(
            spec.in_sp, spec.out, spec.k, spec.s, spec.d, spec.pads
        )
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
        x,
        dy,
        window_strides=spec.d,
        padding=kpads,
        rhs_dilation=spec.s,
        dimension_numbers=dn,
        batch_group_count=spec.groups,
    )


def _kernel_grad_spec(op, x, dy, kernel_shape, *, stride, padding, dilation, groups, layout):
    """Check every argument of ``conv_kernel_grad``: ``(x, dy batched, _ConvSpec)``."""
    if isinstance(kernel_shape, (int, str)) or len(tuple(kernel_shape)) < 3:
        raise ValueError(
            f"{op}: kernel_shape must be the full kernel shape (at least 3 dims), got "
            f"{kernel_shape!r}"
        )
    n = len(tuple(kernel_shape)) - 2
    kernel_shape = ntuple(tuple(kernel_shape), n + 2, "kernel_shape", op)
    x, dy = _as_arrays(x, dy)
    check_dtype(x, "number", "x", op)
    spec = _grad_spec(op, dy, kernel_shape, n, stride, dilation, groups, layout)
    if check_rank(x, n, "kernel_shape", op) != spec.batched:
        raise ValueError(
            f"{op}: x must be batched exactly when dy is, got x.shape={tuple(x.shape)} "
            f"for dy.shape={tuple(dy.shape)}"
        )
    if not spec.batched:
        x, dy = x[None], dy[None]
    if x.shape[channel_axis(x.ndim, n, layout)] != spec.c_in or x.shape[0] != dy.shape[0]:
        raise ValueError(
            f"{op}: x must have C_in={spec.c_in} channels and dy's batch size, got "
            f"x.shape={tuple(x.shape)} for dy.shape={tuple(dy.shape)}"
        )
    in_sp = _spatial(x.shape, n, layout)
    pads = resolve_padding(
        padding, n, op, input_shape=in_sp, kernel_size=spec.k, stride=spec.s, dilation=spec.d
    )
    spec = spec._replace(in_sp=in_sp, pads=pads)
    _check_fits(spec, kernel_shape, op)
    spec = spec._replace(out=_spatial(dy.shape, n, layout))
    _check_dy_shape(spec, "x", op)
    return x, dy, spec
