"""Convolution layers: ``nnx.Module`` wrappers that hold parameters and call the ops.

Each layer validates its arguments in ``__init__`` with the checks the ops use
(:mod:`cnn_jax._checks`), keeps its configuration as plain Python values (for
``repr`` and ``cnn_jax.summary``), stores ``kernel``/``bias`` as ``nnx.Param`` in the
op's kernel layout, and in ``__call__`` only promotes dtypes and calls the op, so
``layer(x) == op(x, layer.kernel, layer.bias, **config)``.

One base class, ``_ConvBase``, owns what the four layers share, as Equinox's
``Pool(init, operation, ...)`` does for its pools: the checks of the common
arguments (``_setup``), the parameters and their PyTorch-default initialisation
(``_param``, ``_init_bias``) and ``__call__``; a layer names its op (``_operation``),
the parameters passed before the bias (``_kernels``) and its options (``_options``).

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
from cnn_jax._checks import (
    PADDING_MODES,
    PADDING_STRINGS,
    check_bool,
    check_choice,
    check_int,
    check_layout,
    check_output_padding,
    declared_padding,
    ntuple,
)
from cnn_jax.nn._init import bias_uniform, conv_fan_in, conv_transpose_fan_in, kaiming_uniform

# ---------------------------------------------------------------------------
# Argument checks only the conv layers need (the shared ones are in cnn_jax._checks).


def _kernel_size(kernel_size, op: str) -> tuple[int, ...]:
    """int -> 2-D; a sequence of ``n`` ints -> ``n``-D."""
    if isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
        if len(kernel_size) == 0:
            raise ValueError(f"{op}: kernel_size must have at least one entry, got {kernel_size!r}")
        return ntuple(kernel_size, len(kernel_size), "kernel_size", op)
    return ntuple(kernel_size, 2, "kernel_size", op)


def _check_groups(in_features: int, out_features: int, groups: int, op: str) -> None:
    if in_features % groups:
        raise ValueError(
            f"{op}: in_features (={in_features}) must be divisible by groups (={groups})"
        )
    if out_features % groups:
        raise ValueError(
            f"{op}: out_features (={out_features}) must be divisible by groups (={groups})"
        )


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


# ---------------------------------------------------------------------------
# The base class.


class _ConvBase(nnx.Module):
    """Shared config, parameters and ``__call__`` of the four conv layers."""

    _kernels = ("kernel",)  # parameters passed to the op before the bias
    _options: tuple[str, ...] = ()  # attributes passed to the op as keywords

    @staticmethod
    def _operation(x, *params, **options):  # the op; each layer names its own
        raise NotImplementedError

    def _setup(
        self,
        op,
        in_features,
        out_features,
        kernel_size,
        *,
        stride,
        padding,
        dilation,
        groups,
        padding_mode,
        use_bias,
        layout,
        dtype,
        param_dtype,
        kernel_init,
        bias_init,
        precision,
        allowed_strings=PADDING_STRINGS,
        output_padding=None,
    ):
        """Check and store the arguments every conv layer has.

        ``padding_mode`` None: the layer has none (transposed conv);
        ``output_padding`` None: the layer has none (every other conv).
        """
        self.in_features = check_int(in_features, "in_features", op)
        self.out_features = check_int(out_features, "out_features", op)
        self.kernel_size = _kernel_size(kernel_size, op)
        n = len(self.kernel_size)
        self.stride = ntuple(stride, n, "stride", op)
        self.dilation = ntuple(dilation, n, "dilation", op)
        if output_padding is not None:
            self.output_padding = ntuple(output_padding, n, "output_padding", op, min_value=0)
            check_output_padding(self.output_padding, self.stride, self.dilation, op)
        self.groups = check_int(groups, "groups", op)
        _check_groups(self.in_features, self.out_features, self.groups, op)
        self.padding, self._padding_low = declared_padding(
            padding,
            n,
            op,
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            allowed_strings=allowed_strings,
        )
        if padding_mode is not None:
            self.padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode", op)
        self.use_bias = check_bool(use_bias, "use_bias", op)
        self.layout = check_layout(layout, op)
        self.dtype = _check_dtype(dtype, "dtype", op, allow_none=True)
        self.param_dtype = _check_dtype(param_dtype, "param_dtype", op, allow_none=False)
        _check_init(kernel_init, "kernel_init", op)
        _check_init(bias_init, "bias_init", op)
        self.precision = precision

    def _param(self, init, shape, rngs: nnx.Rngs) -> nnx.Param:
        return nnx.Param(init(rngs.params(), shape, self.param_dtype))

    def _init_bias(self, bias_init, fan_in: int, rngs: nnx.Rngs) -> None:
        """The ``(C_out,)`` bias (PyTorch's default ``U(+-1/sqrt(fan_in))``), or None."""
        if self.use_bias:
            init = bias_init or bias_uniform(fan_in)
            self.bias = self._param(init, (self.out_features,), rngs)
        else:
            self.bias = nnx.data(None)

    @property
    def num_spatial_dims(self) -> int:
        return len(self.kernel_size)

    @property
    def receptive_field_spec(self) -> tuple | None:
        """``(kernel_size, stride, dilation, padding_low)``, one tuple entry per dim.

        Read by :func:`cnn_jax.receptive_field`. For ``padding="same"`` the low padding
        is ``(dilation * (k - 1)) // 2`` (exact for stride 1).
        """
        return (self.kernel_size, self.stride, self.dilation, self._padding_low)

    def __call__(self, x):
        """Promote ``x`` and the parameters to one dtype and apply the layer's op."""
        bias = None if self.bias is None else self.bias[...]
        kernels = tuple(getattr(self, name)[...] for name in self._kernels)
        x, *params = promote_dtype((x, *kernels, bias), dtype=self.dtype)
        options = {name: getattr(self, name) for name in self._options}
        return self._operation(x, *params, **options)


_COMMON = ("stride", "padding", "dilation", "layout", "precision")


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

    _operation = staticmethod(ops.conv)
    _options = (*_COMMON, "groups", "padding_mode", "flip")

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
        self._setup(
            op,
            in_features,
            out_features,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            padding_mode=padding_mode,
            use_bias=use_bias,
            layout=layout,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            precision=precision,
        )
        self.flip = check_bool(flip, "flip", op)
        fan_in = conv_fan_in(self.in_features, self.kernel_size, self.groups)
        shape = _kernel_shape(
            self.kernel_size, self.in_features // self.groups, self.out_features, self.layout
        )
        self.kernel = self._param(kernel_init or kaiming_uniform(fan_in), shape, rngs)
        self._init_bias(bias_init, fan_in, rngs)


class ConvTranspose(_ConvBase):
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
    _operation = staticmethod(ops.conv_transpose)
    _options = (*_COMMON, "groups", "output_padding")

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
        self._setup(
            "ConvTranspose",
            in_features,
            out_features,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            padding_mode=None,
            use_bias=use_bias,
            layout=layout,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            precision=precision,
            allowed_strings=("valid",),
            output_padding=output_padding,
        )
        fan_in = conv_transpose_fan_in(self.out_features, self.kernel_size, self.groups)
        io = (self.in_features, self.out_features // self.groups)  # PyTorch's weight order
        shape = (
            (*self.kernel_size, *io) if self.layout == "channels_last" else (*io, *self.kernel_size)
        )
        self.kernel = self._param(kernel_init or kaiming_uniform(fan_in), shape, rngs)
        self._init_bias(bias_init, fan_in, rngs)


class DepthwiseConv(_ConvBase):
    """A depthwise convolution layer over :func:`cnn_jax.ops.depthwise_conv`.

    Each input channel is convolved with its own ``depth_multiplier`` filters: PyTorch's
    ``Conv{n}d(C, C * depth_multiplier, k, groups=C)``.

    Args:
      in_features: channels ``C``.
      kernel_size: int (a 2-D layer) or a tuple of ``n`` ints.
      depth_multiplier: filters per input channel; ``C_out = C * depth_multiplier``.
      stride, padding, dilation, padding_mode, use_bias, layout, dtype, param_dtype, precision, rngs: as :class:`Conv`.
      kernel_init, bias_init: None gives PyTorch's defaults with ``fan_in = prod(k)``.

    Kernel: channels_last ``(*k, 1, C_out)``; channels_first ``(C_out, 1, *k)``.

    >>> layer = DepthwiseConv(4, 3, padding=1, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 8, 8, 4))).shape
    (1, 8, 8, 4)
    """

    _operation = staticmethod(ops.depthwise_conv)
    _options = (*_COMMON, "padding_mode")

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
        precision=None,
        rngs: nnx.Rngs,
    ):
        op = "DepthwiseConv"
        in_features = check_int(in_features, "in_features", op)
        self.depth_multiplier = check_int(depth_multiplier, "depth_multiplier", op)
        self._setup(
            op,
            in_features,
            in_features * self.depth_multiplier,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_features,
            padding_mode=padding_mode,
            use_bias=use_bias,
            layout=layout,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            precision=precision,
        )
        fan_in = conv_fan_in(1, self.kernel_size)
        shape = _kernel_shape(self.kernel_size, 1, self.out_features, self.layout)
        self.kernel = self._param(kernel_init or kaiming_uniform(fan_in), shape, rngs)
        self._init_bias(bias_init, fan_in, rngs)


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
      use_bias, layout, dtype, param_dtype, precision, rngs: as :class:`Conv`.
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

    _kernels = ("depthwise_kernel", "pointwise_kernel")
    _operation = staticmethod(ops.separable_conv)
    _options = (*_COMMON, "padding_mode")

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
        precision=None,
        rngs: nnx.Rngs,
    ):
        op = "SeparableConv"
        self.depth_multiplier = check_int(depth_multiplier, "depth_multiplier", op)
        self._setup(
            op,
            in_features,
            out_features,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=1,
            padding_mode=padding_mode,
            use_bias=use_bias,
            layout=layout,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            precision=precision,
        )
        mid = self.in_features * self.depth_multiplier
        n = len(self.kernel_size)
        dw_shape = _kernel_shape(self.kernel_size, 1, mid, self.layout)
        pw_shape = _kernel_shape((1,) * n, mid, self.out_features, self.layout)
        dw_init = kernel_init or kaiming_uniform(conv_fan_in(1, self.kernel_size))
        self.depthwise_kernel = self._param(dw_init, dw_shape, rngs)
        self.pointwise_kernel = self._param(kernel_init or kaiming_uniform(mid), pw_shape, rngs)
        self._init_bias(bias_init, mid, rngs)
