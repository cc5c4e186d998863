"""Transposed convolution and the input gradient of a convolution, which are one thing.

``conv_transpose(x, K)`` is ``dx`` of the forward ``conv(., K')`` whose output
gradient is ``x``; ``conv_input_grad`` is the same with the forward conv named
directly. Both describe that forward conv with a ``_ConvSpec`` (``ops/_conv.py``)
and call :func:`_transpose`, which picks one of three strategies, so neither pass
ever multiplies the zeros that XLA's ``lhs_dilation`` form inserts:

* ``_transpose_matmul``: ``kernel_size == stride``, no padding, no groups (U-Net's
  up-conv): every input pixel writes its own output block, one matmul and a
  depth-to-space reshape.
* ``_transpose_phases`` (the general case): output pixel ``m`` of a stride-``s``
  transposed conv only receives taps ``t`` with ``t * d = m + lo (mod s)``, so each of
  the ``prod(s)`` output phases is a stride-1 convolution of the *undilated* input
  with a sub-kernel, and the phases are interleaved by one reshape. Autodiff of
  stride-1 convs stays on XLA's fast paths.
* ``_transpose_interior``: above ``_MAX_PHASES`` phases the program would take too
  long to compile, so ``dy`` gets its zeros from ``lax.pad`` (interior padding) and
  one stride-1 conv follows; still far faster to differentiate than ``lhs_dilation``.

``benchmarks/conv_transpose_strategies.py`` measures them against each other.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from cnn_jax._checks import check_int, check_output_padding, ntuple, resolve_padding
from cnn_jax.ops._args import (
    channel_axis,
    check_dtype,
    check_size,
    conv_dimension_numbers,
    spatial_axes,
    transpose_output_size,
)
from cnn_jax.ops._conv import (
    _add_bias,
    _as_arrays,
    _check_bias,
    _check_dy_shape,
    _ConvSpec,
    _grad_spec,
    _kernel_axes,
    _num_spatial,
    _spatial,
    _start,
)

# Above this many output phases (prod(stride)) the interior-padding strategy is used.
_MAX_PHASES = 16


# --------------------------------------------------------------------------- public


def conv_transpose(
    x,
    kernel,
    bias=None,
    *,
    stride=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups=1,
    layout="channels_last",
    precision=None,
    preferred_element_type=None,
):
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
    x, conv_kernel, spec = _transpose_spec(
        op,
        x,
        kernel,
        bias,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    y = _add_bias(_transpose(x, conv_kernel, spec), bias, spec.c_in, spec.layout)
    return y if spec.batched else y[0]


def _transpose_spec(
    op,
    x,
    kernel,
    bias,
    *,
    stride,
    padding,
    output_padding,
    dilation,
    groups,
    layout,
    precision,
    preferred_element_type,
):
    """Check every argument of ``conv_transpose`` once: ``(x batched, forward kernel,
    the _ConvSpec of the forward conv whose input gradient this is)``."""
    x, kernel, n, batched = _start(op, x, kernel, layout)
    s = ntuple(stride, n, "stride", op)
    d = ntuple(dilation, n, "dilation", op)
    g = check_int(groups, "groups", op)
    op_pad = ntuple(output_padding, n, "output_padding", op, min_value=0)
    check_output_padding(op_pad, s, d, op)
    c_in = x.shape[channel_axis(x.ndim, n, layout)]
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
    out_sp = transpose_output_size(in_sp, k, s, d, pads, op_pad)
    if any(o <= 0 for o in out_sp):
        raise ValueError(
            f"{op}: padding must leave a positive output size, got padding={padding!r} "
            f"giving output {out_sp}"
        )
    check_size(
        out_sp,
        "output",
        "stride, dilation and output_padding",
        f"stride={s}, dilation={d}, output_padding={op_pad}",
        op,
    )
    _check_bias(bias, c_out_g * g, op)
    # The forward conv maps the output (C_out = c_out_g * g channels) back to x.
    spec = _ConvSpec(
        layout=layout,
        batched=batched,
        k=k,
        s=s,
        d=d,
        groups=g,
        c_in=c_out_g * g,
        c_out=c_in,
        in_sp=out_sp,
        pads=pads,
        out=in_sp,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return x, conv_kernel, spec


def conv_input_grad(
    dy, kernel, input_shape, *, stride=1, padding=0, dilation=1, groups=1, layout="channels_last"
):
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
    check_dtype(dy, "number", "dy", op)
    spec = _grad_spec(op, dy, kernel.shape, n, stride, dilation, groups, layout)
    in_sp = _input_spatial(input_shape, n, spec, dy, op)
    check_size(in_sp, "output", "input_shape", f"input_shape={input_shape!r}", op)
    if not spec.batched:
        dy = dy[None]
    pads = resolve_padding(
        padding, n, op, input_shape=in_sp, kernel_size=spec.k, stride=spec.s, dilation=spec.d
    )
    spec = spec._replace(in_sp=in_sp, pads=pads, out=_spatial(dy.shape, n, spec.layout))
    _check_dy_shape(spec, "input_shape", op)
    dx = _transpose(dy, kernel, spec)
    return dx if spec.batched else dx[0]


def _input_spatial(input_shape, n, spec: _ConvSpec, dy, op):
    """The spatial part of ``input_shape`` (full or spatial only), checked against dy."""
    shape = (
        tuple(getattr(input_shape, "shape", input_shape))
        if not isinstance(input_shape, (int, str))
        else input_shape
    )
    if isinstance(shape, (int, str)) or len(shape) not in (n, n + 1, n + 2):
        raise ValueError(
            f"{op}: input_shape must be x's shape ({n + 2} or {n + 1} dims) or its {n} "
            f"spatial sizes, got {input_shape!r}"
        )
    shape = ntuple(shape, len(shape), "input_shape", op)
    if len(shape) == n:
        return shape
    if (len(shape) == n + 2) != spec.batched:
        raise ValueError(
            f"{op}: input_shape must be batched exactly when dy is, got input_shape="
            f"{shape} for dy.shape={tuple(dy.shape)}"
        )
    if shape[channel_axis(len(shape), n, spec.layout)] != spec.c_in or (
        spec.batched and shape[0] != dy.shape[0]
    ):
        raise ValueError(
            f"{op}: input_shape must have C_in={spec.c_in} channels and dy's batch size, "
            f"got input_shape={shape} for dy.shape={tuple(dy.shape)}"
        )
    return _spatial(shape, n, spec.layout)


# --------------------------------------------------------------------------- strategies


def _transpose(dy, kernel, spec: _ConvSpec):
    """``dx`` of ``conv(x, kernel)`` described by ``spec``, given the batched ``dy``.

    ``kernel`` is the forward conv's kernel (HWIO / OIHW); ``spec.in_sp`` is ``x``'s
    spatial shape, so the result's. Picks one of the module docstring's strategies.
    """
    n = len(spec.k)
    dy_sp = _spatial(dy.shape, n, spec.layout)
    if (
        spec.groups == 1
        and spec.k == spec.s
        and all(dd == 1 for dd in spec.d)
        and all(p == (0, 0) for p in spec.pads)
        and tuple(spec.in_sp) == tuple(i * ss for i, ss in zip(dy_sp, spec.s))
    ):
        return _transpose_matmul(dy, kernel, spec)
    w = _transpose_kernel(kernel, n, spec.layout, spec.groups)
    if math.prod(spec.s) > _MAX_PHASES:
        return _transpose_interior(dy, w, spec)
    return _transpose_phases(dy, w, spec)


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


def _transpose_matmul(dy, kernel, spec: _ConvSpec):
    """``kernel_size == stride``, no padding: ``y[s * q + t] = dy[q] @ K[t]^T``.

    The whole op is one matmul ``(N * prod(q), O) @ (O, prod(k) * C)`` and a
    depth-to-space reshape; its gradients are matmuls too. ``kernel`` is the forward
    conv's kernel (HWIO / OIHW).
    """
    n = len(spec.k)
    if spec.layout == "channels_first":
        dy = jnp.moveaxis(dy, 1, -1)
        kernel = jnp.moveaxis(kernel, (0, 1), (-1, -2))  # OIHW -> HWIO
    # (N, *q, O) . (*k, C, O) over O -> (N, *q, *k, C)
    y = lax.dot_general(
        dy,
        kernel,
        (((n + 1,), (n + 1,)), ((), ())),
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )
    perm = [0, *itertools.chain.from_iterable((1 + i, n + 1 + i) for i in range(n)), 2 * n + 1]
    y = jnp.transpose(y, perm)
    shape = (y.shape[0], *(y.shape[1 + 2 * i] * y.shape[2 + 2 * i] for i in range(n)), y.shape[-1])
    y = y.reshape(shape)
    return jnp.moveaxis(y, -1, 1) if spec.layout == "channels_first" else y


def _transpose_interior(dy, w, spec: _ConvSpec):
    """One stride-1 conv of ``dy`` with its zeros inserted by ``lax.pad`` (interior
    padding); ``w`` is the transposed kernel. Each multiply-by-zero is paid."""
    n = len(spec.k)
    k_axes = _kernel_axes(n, spec.layout)
    dy_sp = _spatial(dy.shape, n, spec.layout)
    config = [(0, 0, 0)] * dy.ndim
    for a, o, i, kk, ss, dd, (lo, _) in zip(
        spatial_axes(dy.ndim, n, spec.layout), spec.in_sp, dy_sp, spec.k, spec.s, spec.d, spec.pads
    ):
        config[a] = (dd * (kk - 1) - lo, o - (i - 1) * ss - 1 + lo, ss - 1)
    dy = lax.pad(dy, jnp.zeros((), dy.dtype), config)
    return lax.conv_general_dilated(
        dy,
        jnp.flip(w, axis=k_axes),
        (1,) * n,
        ((0, 0),) * n,
        rhs_dilation=spec.d,
        dimension_numbers=conv_dimension_numbers(n, spec.layout),
        feature_group_count=spec.groups,
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )


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


def _transpose_phases(dy, w, spec: _ConvSpec):
    """One stride-1 conv per output phase (``w`` is the transposed kernel), interleaved."""
    n, layout = len(spec.k), spec.layout
    k_axes = _kernel_axes(n, layout)
    k = tuple(w.shape[a] for a in k_axes)
    dy_sp = _spatial(dy.shape, n, layout)
    plans = [
        _phase_plan(o, i, kk, ss, dd, lo)
        for o, i, kk, ss, dd, (lo, _) in zip(spec.in_sp, dy_sp, k, spec.s, spec.d, spec.pads)
    ]
    q_max = tuple(p[0] for p in plans)
    c_out = w.shape[0] if layout == "channels_first" else w.shape[-1]
    phases = []
    for combo in itertools.product(*[p[1] for p in plans]):
        if any(c is None for c in combo):  # no tap lands on this phase: zeros
            shape = (
                (dy.shape[0], *q_max, c_out)
                if layout == "channels_last"
                else (dy.shape[0], c_out, *q_max)
            )
            phases.append(jnp.zeros(shape, spec.preferred_element_type or jnp.result_type(dy, w)))
            continue
        idx = [slice(None)] * w.ndim
        for a, (t0, _, s_t, _, _) in zip(k_axes, combo):
            idx[a] = slice(t0, None, s_t)
        phases.append(
            lax.conv_general_dilated(
                dy,
                jnp.flip(w[tuple(idx)], axis=k_axes),
                (1,) * n,
                [c[4] for c in combo],
                rhs_dilation=[c[3] for c in combo],
                dimension_numbers=conv_dimension_numbers(n, layout),
                feature_group_count=spec.groups,
                precision=spec.precision,
                preferred_element_type=spec.preferred_element_type,
            )
        )
    y = phases[0] if len(phases) == 1 else _interleave(phases, spec.s, q_max, c_out, layout)
    if tuple(_spatial(y.shape, n, layout)) != tuple(spec.in_sp):
        idx = [slice(None)] * y.ndim
        for a, o in zip(spatial_axes(y.ndim, n, layout), spec.in_sp):
            idx[a] = slice(0, o)
        y = y[tuple(idx)]
    return y


def _interleave(phases, s, q_max, c_out, layout):
    """``prod(s)`` phase outputs ``(N, *q, C)`` (row-major over phases) -> one output
    whose pixel ``q * s + p`` comes from phase ``p``: one stack, transpose, reshape."""
    n = len(s)
    y = jnp.stack(phases).reshape(*s, *phases[0].shape)
    # (*s, N, *q, C) -> (N, q1, s1, q2, s2, ..., C), then merge each (q, s) pair.
    sp = spatial_axes(n + 2, n, layout)
    ch = channel_axis(n + 2, n, layout)
    perm, shape = [n], [phases[0].shape[0]]
    for i in range(n + 2):
        if i in sp:
            j = sp.index(i)
            perm += [n + i, j]
            shape.append(q_max[j] * s[j])
        elif i == ch:
            perm.append(n + i)
            shape.append(c_out)
    return jnp.transpose(y, perm).reshape(shape)
