"""Shape and receptive-field arithmetic, shared by the ops and usable on its own.

Pure arithmetic on Python ints: no array, no jax, no flax. :func:`receptive_field`
reads a model too, but not by walking it here: it dispatches on the argument's type
(``functools.singledispatch``) and :mod:`cnn_jax.nn` registers the reader for
``flax.nnx`` modules (the receptive-field protocol, ``cnn_jax.nn.main_path``), so
this lowest tier never imports a higher one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

from cnn_jax._checks import check_bool, check_output_padding, ntuple, resolve_padding
from cnn_jax.ops._args import transpose_output_size, window_output_size


def _geometry(input_shape, kernel_size, stride, dilation, op: str):
    """``(shape, k, s, d)``: the spatial input shape and per-dim window arguments."""
    if isinstance(input_shape, (int, str)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"{op}: input_shape must be a tuple of spatial sizes, got {input_shape!r}")
    if len(input_shape) == 0:
        raise ValueError(
            f"{op}: input_shape must have at least one spatial dim, got {input_shape!r}"
        )
    n = len(input_shape)
    shape = ntuple(input_shape, n, "input_shape", op, min_value=1)
    k = ntuple(kernel_size, n, "kernel_size", op)
    return shape, k, ntuple(stride, n, "stride", op), ntuple(dilation, n, "dilation", op)


def conv_output_shape(
    input_shape: Sequence[int],
    kernel_size,
    *,
    stride=1,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
) -> tuple[int, ...]:
    """Spatial output shape of a convolution or pooling window.

    Per dim: ``floor((in + lo + hi - dilation * (k - 1) - 1) / stride) + 1``
    (``ceil`` with ``ceil_mode``, dropping a last window that would start in the high
    padding, as PyTorch does).

    Args:
      input_shape: spatial input shape, e.g. ``(H, W)``.
      kernel_size: int or tuple, one per spatial dim.
      stride, dilation: int or tuple.
      padding: int, tuple, ``(low, high)`` pairs, ``"valid"``, ``"same"``, ``"full"`` or
        ``"causal"`` (1-D).
      ceil_mode: round up instead of down (pooling).

    Returns:
      The spatial output shape, a tuple of ints.

    >>> conv_output_shape((28, 28), 3, padding=2, stride=2)
    (15, 15)
    """
    op = "conv_output_shape"
    shape, k, s, d = _geometry(input_shape, kernel_size, stride, dilation, op)
    ceil_mode = check_bool(ceil_mode, "ceil_mode", op)
    pads = resolve_padding(
        padding, len(shape), op, input_shape=shape, kernel_size=k, stride=s, dilation=d
    )
    out = tuple(
        window_output_size(i, kk, ss, dd, lo, hi, ceil_mode)
        for i, kk, ss, dd, (lo, hi) in zip(shape, k, s, d, pads)
    )
    if any(o <= 0 for o in out):
        raise ValueError(
            f"{op}: kernel_size {k} (dilation {d}) must not exceed the padded input "
            f"{tuple(i + lo + hi for i, (lo, hi) in zip(shape, pads))}, got output {out}"
        )
    return out


def conv_transpose_output_shape(
    input_shape: Sequence[int], kernel_size, *, stride=1, padding=0, output_padding=0, dilation=1
) -> tuple[int, ...]:
    """Spatial output shape of a transposed convolution (PyTorch's formula).

    Per dim: ``(in - 1) * stride - lo - hi + dilation * (k - 1) + output_padding + 1``,
    where ``(lo, hi)`` is the padding of the forward convolution being transposed
    (``lo = hi = padding`` for an int).

    Args:
      input_shape: spatial input shape.
      kernel_size, stride, dilation, output_padding: int or tuple per spatial dim;
        ``output_padding`` must be smaller than ``stride`` or ``dilation``.
      padding: int, tuple, ``(low, high)`` pairs or ``"valid"``.

    Returns:
      The spatial output shape, a tuple of ints.

    >>> conv_transpose_output_shape((5,), 4, stride=2)
    (12,)
    """
    op = "conv_transpose_output_shape"
    shape, k, s, d = _geometry(input_shape, kernel_size, stride, dilation, op)
    op_pad = ntuple(output_padding, len(shape), "output_padding", op, min_value=0)
    check_output_padding(op_pad, s, d, op)
    pads = resolve_padding(padding, len(shape), op, allowed_strings=("valid",))
    out = transpose_output_size(shape, k, s, d, pads, op_pad)
    if any(o <= 0 for o in out):
        raise ValueError(f"{op}: padding {padding!r} must leave a positive output size, got {out}")
    return out


class ReceptiveField(NamedTuple):
    """Receptive field of one output unit, in input pixels.

    Attributes:
      size: extent of the field (an int, or a tuple per spatial dim).
      jump: distance between neighbouring output units' fields (product of strides).
      start: centre of the first output unit's field, in input pixel coordinates
        (pixel ``i`` has centre ``i``; negative where padding shifts it out).
    """

    size: int | tuple[int, ...]
    jump: int | tuple[int, ...]
    start: float | tuple[float, ...]


@functools.singledispatch
def receptive_field(layers) -> ReceptiveField:
    """Receptive field of a stack of conv/pool layers (Araujo et al., Distill 2019).

    From the output back to the input, ``r_{l-1} = s_l * r_l + k_l - s_l`` with the
    effective kernel ``k = d * (k - 1) + 1``; ``jump`` is the product of strides and
    ``start = sum_l (d_l * (k_l - 1) / 2 - p_l) * jump_{l-1}``.

    Args:
      layers: a sequence of ``(kernel_size, stride)``, ``(kernel_size, stride,
        dilation)`` or ``(kernel_size, stride, dilation, padding)`` from input to
        output (ints, or tuples per spatial dim; padding is the low-side amount), or a
        ``cnn_jax.models`` model, whose conv/pool layers are read in order.

    Returns:
      A :class:`ReceptiveField` ``(size, jump, start)``; ints when every entry is an
      int, tuples per spatial dim otherwise.

    >>> receptive_field([(3, 1), (3, 1)])
    ReceptiveField(size=5, jump=1, start=2.0)
    """
    op = "receptive_field"
    if not isinstance(layers, Sequence) or isinstance(layers, str):
        raise TypeError(
            f"{op}: layers must be a sequence of (kernel_size, stride[, dilation]) or a "
            f"cnn_jax model, got {type(layers).__name__}"
        )
    if len(layers) == 0:
        raise ValueError(
            f"{op}: layers must hold at least one (kernel_size, stride) entry, got {layers!r}"
        )
    n = 1
    for layer in layers:
        if not isinstance(layer, Sequence) or not 2 <= len(layer) <= 4:
            raise ValueError(
                f"{op}: each layer must be (kernel_size, stride[, dilation[, padding]]), "
                f"got {layer!r}"
            )
        n = max([n] + [len(v) for v in layer if isinstance(v, Sequence)])
    scalar = all(not isinstance(v, Sequence) for layer in layers for v in layer)
    size, jump, start = [1] * n, [1] * n, [0.0] * n
    for layer in layers:
        k = ntuple(layer[0], n, "kernel_size", op)
        s = ntuple(layer[1], n, "stride", op)
        d = ntuple(layer[2] if len(layer) > 2 else 1, n, "dilation", op)
        p = ntuple(layer[3] if len(layer) > 3 else 0, n, "padding", op, min_value=0)
        for i in range(n):
            eff = d[i] * (k[i] - 1) + 1
            start[i] += ((eff - 1) / 2 - p[i]) * jump[i]
            size[i] += (eff - 1) * jump[i]
            jump[i] *= s[i]
    if scalar:
        return ReceptiveField(size[0], jump[0], start[0])
    return ReceptiveField(tuple(size), tuple(jump), tuple(start))
