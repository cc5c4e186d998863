"""Convolution layers: ``nnx.Module`` wrappers that hold parameters and call the ops.

Each layer validates its arguments in ``__init__`` with the normalisers the ops use
(``cnn_jax.ops._args``), keeps its configuration as plain Python values (for
``repr`` and ``cnn_jax.summary``), stores ``kernel``/``bias`` as ``nnx.Param`` in the
op's kernel layout, and in ``__call__`` only promotes dtypes and calls the op, so
``layer(x) == op(x, layer.kernel, layer.bias, **config)``.

Kernel size: an int means a 2-D layer (``Conv(3, 8, 3)`` is PyTorch's ``Conv2d``); a
tuple of length ``n`` gives an ``n``-D layer (``(3,)`` is 1-D, ``(3, 3, 3)`` is 3-D).

Initialisation defaults to PyTorch's (see :mod:`cnn_jax.nn._init`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from cnn_jax import ops
from cnn_jax.nn._init import bias_uniform, conv_fan_in, conv_transpose_fan_in, kaiming_uniform
from cnn_jax.ops._args import (
    check_choice,
    check_int,
    check_layout,
    is_pairs,
    ntuple,
    resolve_padding,
)
from cnn_jax.ops._shape import check_output_padding

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# ---------------------------------------------------------------------------
# Argument checks shared by the conv layers (they call the ops' normalisers).


def _kernel_size(kernel_size, op: str) -> tuple[int, ...]:
    """int -> 2-D; a sequence of ``n`` ints -> ``n``-D."""
    if isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
        if len(kernel_size) == 0:
            raise ValueError(f"{op}: kernel_size must have at least one entry, got {kernel_size!r}")
        return ntuple(kernel_size, len(kernel_size), "kernel_size", op)
    return ntuple(kernel_size, 2, "kernel_size", op)


def _padding(padding, n: int, op: str, k, s, d, allowed_strings) -> tuple:
    """Validate ``padding``; return ``(stored form, low padding per dim)``.

    The stored form is what the op is called with: a lower-cased string, a tuple of
    ints or a tuple of ``(low, high)`` pairs. ``"same"`` is resolved by the op (it
    needs the input size); its low padding is reported as ``(eff_k - 1) // 2``, exact
    for stride 1 (with stride > 1 it depends on the input size).
    """
    if isinstance(padding, str) and padding.lower() == "same" and "same" in allowed_strings:
        eff = tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))
        return "same", tuple((e - 1) // 2 for e in eff)
    pads = resolve_padding(
        padding, n, op, kernel_size=k, stride=s, dilation=d, allowed_strings=allowed_strings
    )
    if isinstance(padding, str):
        stored = padding.lower()
    elif is_pairs(padding):
        stored = pads
    else:
        stored = tuple(lo for lo, _ in pads)
    return stored, tuple(lo for lo, _ in pads)


def _check_groups(in_features: int, out_features: int, groups: int, op: str) -> None:
    if in_features % groups:
        raise ValueError(
            f"{op}: in_features (={in_features}) must be divisible by groups (={groups})"
        )
    if out_features % groups:
        raise ValueError(
            f"{op}: out_features (={out_features}) must be divisible by groups (={groups})"
        )


def _check_bool(value, name: str, op: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")
    return value


def _check_dtype(value, name: str, op: str, *, allow_none: bool):
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{op}: {name} must be a dtype, got None")
    try:
        jnp.dtype(value)
    except TypeError:
        allowed = "a dtype or None" if allow_none else "a dtype"
        raise TypeError(f"{op}: {name} must be {allowed}, got {value!r}") from None
    return value


def _check_init(value, name: str, op: str):
    if value is not None and not callable(value):
        raise TypeError(
            f"{op}: {name} must be an initializer init(key, shape, dtype) or None, got {value!r}"
        )
    return value


def _kernel_shape(kernel_size, in_axis: int, out_axis: int, layout: str) -> tuple[int, ...]:
    """channels_last ``(*k, in_axis, out_axis)``; channels_first ``(out_axis, in_axis, *k)``.

    ``in_axis``/``out_axis`` are the sizes of the weight's 2nd-from-last/last axes in the
    channels_last form (the ops' kernel layouts).
    """
    if layout == "channels_last":
        return (*kernel_size, in_axis, out_axis)
    return (out_axis, in_axis, *kernel_size)


class _ConvBase(nnx.Module):
    """Shared config of Conv, DepthwiseConv and SeparableConv."""

    def _setup(self, op, in_features, out_features, kernel_size, stride, padding, dilation,
               groups, padding_mode, use_bias, layout, dtype, param_dtype, kernel_init,
               bias_init, allowed_strings=("valid", "same", "full", "causal")):
        self.in_features = check_int(in_features, "in_features", op)
        self.out_features = check_int(out_features, "out_features", op)
        self.kernel_size = _kernel_size(kernel_size, op)
        n = len(self.kernel_size)
        self.stride = ntuple(stride, n, "stride", op)
        self.dilation = ntuple(dilation, n, "dilation", op)
        self.groups = check_int(groups, "groups", op)
        _check_groups(self.in_features, self.out_features, self.groups, op)
        self.padding, self._padding_low = _padding(
            padding, n, op, self.kernel_size, self.stride, self.dilation, allowed_strings
        )
        self.padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode", op)
        self.use_bias = _check_bool(use_bias, "use_bias", op)
        self.layout = check_layout(layout, op)
        self.dtype = _check_dtype(dtype, "dtype", op, allow_none=True)
        self.param_dtype = _check_dtype(param_dtype, "param_dtype", op, allow_none=False)
        _check_init(kernel_init, "kernel_init", op)
        _check_init(bias_init, "bias_init", op)

    @property
    def num_spatial_dims(self) -> int:
        return len(self.kernel_size)

    @property
    def receptive_field_spec(self) -> tuple:
        """``(kernel_size, stride, dilation, padding_low)``, one tuple entry per dim.

        Read by :func:`cnn_jax.receptive_field`. For ``padding="same"`` the low padding
        is ``(dilation * (k - 1)) // 2`` (exact for stride 1).
        """
        return (self.kernel_size, self.stride, self.dilation, self._padding_low)


class Conv(_ConvBase):
    """An ``n``-D convolution layer over :func:`cnn_jax.ops.conv` (PyTorch ``Conv{n}d``).

    Args:
      in_features: input channels ``C_in``.
      out_features: output channels ``C_out``.
      kernel_size: int (a 2-D layer) or a tuple of ``n`` ints (an ``n``-D layer).
      stride, dilation: int or tuple of ``n`` ints.
      padding: int, tuple of ``n`` ints, ``n`` ``(low, high)`` pairs, ``"valid"``,
        ``"same"``, ``"full"`` or ``"causal"`` (1-D), as :func:`cnn_jax.ops.conv`.
      groups: grouped convolution; ``in_features`` and ``out_features`` must be
        divisible by it.
      padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
      use_bias: add a learned ``(C_out,)`` bias.
      flip: flip the kernel (true convolution instead of cross-correlation).
      layout: ``"channels_last"`` (x ``(N, *spatial, C)``, kernel ``(*k, C_in // groups,
        C_out)``) or ``"channels_first"`` (x ``(N, C, *spatial)``, kernel
        ``(C_out, C_in // groups, *k)``, PyTorch's weight layout).
      dtype: compute dtype (x, kernel and bias are cast to it); None promotes the
        input and parameter dtypes.
      param_dtype: dtype of the parameters.
      kernel_init, bias_init: ``init(key, shape, dtype)``; None gives PyTorch's
        defaults: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for both, with
        ``fan_in = C_in // groups * prod(k)``.
      precision: passed to the op (``lax.Precision`` or None).
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Output spatial size per dim: ``floor((in + lo + hi - dilation * (k - 1) - 1) /
    stride) + 1``.

    >>> layer = Conv(3, 8, 3, padding=1, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 16, 16, 3))).shape
    (2, 16, 16, 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size,
        *,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        padding_mode: str = "zeros",
        use_bias: bool = True,
        flip: bool = False,
        layout: str = "channels_last",
        dtype=None,
        param_dtype=jnp.float32,
        kernel_init=None,
        bias_init=None,
        precision=None,
        rngs: nnx.Rngs,
    ):
        op = "Conv"
        self._setup(op, in_features, out_features, kernel_size, stride, padding, dilation,
                    groups, padding_mode, use_bias, layout, dtype, param_dtype, kernel_init,
                    bias_init)
        self.flip = _check_bool(flip, "flip", op)
        self.precision = precision
        fan_in = conv_fan_in(self.in_features, self.kernel_size, self.groups)
        shape = _kernel_shape(self.kernel_size, self.in_features // self.groups,
                              self.out_features, self.layout)
        kernel_init = kernel_init or kaiming_uniform(fan_in)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, self.param_dtype))
        if self.use_bias:
            bias_init = bias_init or bias_uniform(fan_in)
            self.bias = nnx.Param(bias_init(rngs.params(), (self.out_features,), self.param_dtype))
        else:
            self.bias = nnx.data(None)

    def __call__(self, x):
        """Apply the convolution: ``x`` ``(N, *spatial, C_in)`` (or unbatched) -> ``y``."""
        bias = None if self.bias is None else self.bias[...]
        x, kernel, bias = promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        return ops.conv(
            x, kernel, bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, padding_mode=self.padding_mode,
            flip=self.flip, layout=self.layout, precision=self.precision,
        )


class ConvTranspose(nnx.Module):
    """A transposed convolution layer over :func:`cnn_jax.ops.conv_transpose`.

    Equal to PyTorch's ``ConvTranspose{n}d``: the gradient of a convolution with
    respect to its input. Output size per dim:
    ``(in - 1) * stride - lo - hi + dilation * (k - 1) + output_padding + 1``.

    Args:
      in_features: input channels ``C_in``.
      out_features: output channels ``C_out``.
      kernel_size: int (a 2-D layer) or a tuple of ``n`` ints (an ``n``-D layer).
      stride, dilation: int or tuple of ``n`` ints.
      padding: int, tuple, ``(low, high)`` pairs or ``"valid"``: the padding of the
        forward convolution this layer transposes.
      output_padding: int or tuple; each entry smaller than its stride or dilation.
      groups: ``in_features`` and ``out_features`` must be divisible by it.
      use_bias: add a learned ``(C_out,)`` bias.
      layout: ``"channels_last"`` (kernel ``(*k, C_in, C_out // groups)``) or
        ``"channels_first"`` (kernel ``(C_in, C_out // groups, *k)``, PyTorch's).
      dtype, param_dtype, precision, rngs: as :class:`Conv`.
      kernel_init, bias_init: None gives PyTorch's defaults,
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with PyTorch's transposed-weight
        ``fan_in = C_out // groups * prod(k)``.

    ``receptive_field_spec`` is None: an upsampling layer does not fit the
    ``(kernel, stride)`` receptive-field recursion, so it is skipped there.

    >>> layer = ConvTranspose(8, 4, 2, stride=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 5, 5, 8))).shape
    (1, 10, 10, 4)
    """

    receptive_field_spec = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size,
        *,
        stride=1,
        padding=0,
        output_padding=0,
        dilation=1,
        groups: int = 1,
        use_bias: bool = True,
        layout: str = "channels_last",
        dtype=None,
        param_dtype=jnp.float32,
        kernel_init=None,
        bias_init=None,
        precision=None,
        rngs: nnx.Rngs,
    ):
        op = "ConvTranspose"
        self.in_features = check_int(in_features, "in_features", op)
        self.out_features = check_int(out_features, "out_features", op)
        self.kernel_size = _kernel_size(kernel_size, op)
        n = len(self.kernel_size)
        self.stride = ntuple(stride, n, "stride", op)
        self.dilation = ntuple(dilation, n, "dilation", op)
        self.output_padding = ntuple(output_padding, n, "output_padding", op, min_value=0)
        check_output_padding(self.output_padding, self.stride, self.dilation, op)
        self.groups = check_int(groups, "groups", op)
        _check_groups(self.in_features, self.out_features, self.groups, op)
        self.padding, _ = _padding(padding, n, op, self.kernel_size, self.stride,
                                   self.dilation, ("valid",))
        self.use_bias = _check_bool(use_bias, "use_bias", op)
        self.layout = check_layout(layout, op)
        self.dtype = _check_dtype(dtype, "dtype", op, allow_none=True)
        self.param_dtype = _check_dtype(param_dtype, "param_dtype", op, allow_none=False)
        _check_init(kernel_init, "kernel_init", op)
        _check_init(bias_init, "bias_init", op)
        self.precision = precision
        fan_in = conv_transpose_fan_in(self.out_features, self.kernel_size, self.groups)
        if self.layout == "channels_last":
            shape = (*self.kernel_size, self.in_features, self.out_features // self.groups)
        else:
            shape = (self.in_features, self.out_features // self.groups, *self.kernel_size)
        kernel_init = kernel_init or kaiming_uniform(fan_in)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, self.param_dtype))
        if self.use_bias:
            bias_init = bias_init or bias_uniform(fan_in)
            self.bias = nnx.Param(bias_init(rngs.params(), (self.out_features,), self.param_dtype))
        else:
            self.bias = nnx.data(None)

    @property
    def num_spatial_dims(self) -> int:
        return len(self.kernel_size)

    def __call__(self, x):
        """Apply the transposed convolution: ``(N, *spatial, C_in)`` -> ``(N, *out, C_out)``."""
        bias = None if self.bias is None else self.bias[...]
        x, kernel, bias = promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        return ops.conv_transpose(
            x, kernel, bias, stride=self.stride, padding=self.padding,
            output_padding=self.output_padding, dilation=self.dilation, groups=self.groups,
            layout=self.layout, precision=self.precision,
        )


class DepthwiseConv(_ConvBase):
    """A depthwise convolution layer over :func:`cnn_jax.ops.depthwise_conv`.

    Each input channel is convolved with its own ``depth_multiplier`` filters: PyTorch's
    ``Conv{n}d(C, C * depth_multiplier, k, groups=C)``.

    Args:
      in_features: channels ``C``.
      kernel_size: int (a 2-D layer) or a tuple of ``n`` ints.
      depth_multiplier: filters per input channel; ``C_out = C * depth_multiplier``.
      stride, padding, dilation, padding_mode, use_bias, layout, dtype, param_dtype,
        rngs: as :class:`Conv`.
      kernel_init, bias_init: None gives PyTorch's defaults with ``fan_in = prod(k)``.

    Kernel: channels_last ``(*k, 1, C_out)``; channels_first ``(C_out, 1, *k)``.

    >>> layer = DepthwiseConv(4, 3, padding=1, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 8, 8, 4))).shape
    (1, 8, 8, 4)
    """

    def __init__(
        self,
        in_features: int,
        kernel_size,
        *,
        depth_multiplier: int = 1,
        stride=1,
        padding=0,
        dilation=1,
        padding_mode: str = "zeros",
        use_bias: bool = True,
        layout: str = "channels_last",
        dtype=None,
        param_dtype=jnp.float32,
        kernel_init=None,
        bias_init=None,
        rngs: nnx.Rngs,
    ):
        op = "DepthwiseConv"
        in_features = check_int(in_features, "in_features", op)
        self.depth_multiplier = check_int(depth_multiplier, "depth_multiplier", op)
        self._setup(op, in_features, in_features * self.depth_multiplier, kernel_size, stride,
                    padding, dilation, in_features, padding_mode, use_bias, layout, dtype,
                    param_dtype, kernel_init, bias_init)
        fan_in = conv_fan_in(1, self.kernel_size)
        shape = _kernel_shape(self.kernel_size, 1, self.out_features, self.layout)
        kernel_init = kernel_init or kaiming_uniform(fan_in)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, self.param_dtype))
        if self.use_bias:
            bias_init = bias_init or bias_uniform(fan_in)
            self.bias = nnx.Param(bias_init(rngs.params(), (self.out_features,), self.param_dtype))
        else:
            self.bias = nnx.data(None)

    def __call__(self, x):
        """Apply the depthwise convolution: ``(N, *spatial, C)`` -> ``(N, *out, C * m)``."""
        bias = None if self.bias is None else self.bias[...]
        x, kernel, bias = promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        return ops.depthwise_conv(
            x, kernel, bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, padding_mode=self.padding_mode, layout=self.layout,
        )


class SeparableConv(_ConvBase):
    """A depthwise-separable convolution over :func:`cnn_jax.ops.separable_conv`.

    A depthwise convolution (``depth_multiplier`` filters per channel) followed by a
    1x1 (pointwise) convolution to ``out_features``, with one bias after the pointwise
    step: PyTorch's ``Conv{n}d(C, C*m, k, groups=C, bias=False)`` then
    ``Conv{n}d(C*m, out, 1)``.

    Args:
      in_features: input channels ``C``.
      out_features: output channels.
      kernel_size: int (a 2-D layer) or a tuple of ``n`` ints.
      depth_multiplier: depthwise filters per input channel ``m``.
      stride, padding, dilation, padding_mode: of the depthwise step, as :class:`Conv`.
      use_bias, layout, dtype, param_dtype, rngs: as :class:`Conv`.
      kernel_init: initialiser for both kernels; None gives PyTorch's defaults
        (``fan_in = prod(k)`` for the depthwise, ``C * m`` for the pointwise kernel).
      bias_init: None gives PyTorch's pointwise-conv default (``fan_in = C * m``).

    Parameters ``depthwise_kernel`` (channels_last ``(*k, 1, C*m)``, channels_first
    ``(C*m, 1, *k)``), ``pointwise_kernel`` (``(*1s, C*m, out)`` / ``(out, C*m, *1s)``)
    and ``bias`` ``(out,)``.

    >>> layer = SeparableConv(4, 8, 3, padding=1, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 8, 8, 4))).shape
    (1, 8, 8, 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size,
        *,
        depth_multiplier: int = 1,
        stride=1,
        padding=0,
        dilation=1,
        padding_mode: str = "zeros",
        use_bias: bool = True,
        layout: str = "channels_last",
        dtype=None,
        param_dtype=jnp.float32,
        kernel_init=None,
        bias_init=None,
        rngs: nnx.Rngs,
    ):
        op = "SeparableConv"
        self.depth_multiplier = check_int(depth_multiplier, "depth_multiplier", op)
        self._setup(op, in_features, out_features, kernel_size, stride, padding, dilation, 1,
                    padding_mode, use_bias, layout, dtype, param_dtype, kernel_init, bias_init)
        mid = self.in_features * self.depth_multiplier
        n = len(self.kernel_size)
        dw_shape = _kernel_shape(self.kernel_size, 1, mid, self.layout)
        pw_shape = _kernel_shape((1,) * n, mid, self.out_features, self.layout)
        dw_init = kernel_init or kaiming_uniform(conv_fan_in(1, self.kernel_size))
        pw_init = kernel_init or kaiming_uniform(mid)
        self.depthwise_kernel = nnx.Param(dw_init(rngs.params(), dw_shape, self.param_dtype))
        self.pointwise_kernel = nnx.Param(pw_init(rngs.params(), pw_shape, self.param_dtype))
        if self.use_bias:
            bias_init = bias_init or bias_uniform(mid)
            self.bias = nnx.Param(bias_init(rngs.params(), (self.out_features,), self.param_dtype))
        else:
            self.bias = nnx.data(None)

    def __call__(self, x):
        """Apply depthwise then pointwise convolution: ``(N, *spatial, C)`` -> ``(N, *out, out)``."""
        bias = None if self.bias is None else self.bias[...]
        x, dw, pw, bias = promote_dtype(
            (x, self.depthwise_kernel[...], self.pointwise_kernel[...], bias), dtype=self.dtype
        )
        return ops.separable_conv(
            x, dw, pw, bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, padding_mode=self.padding_mode, layout=self.layout,
        )
