"""Pooling layers: ``nnx.Module`` wrappers holding only static config; they call the ops.

Window arguments follow the ops: an int ``window`` pools every spatial dim of the
(batched) input, the rank coming from ``x``; a tuple fixes the number of spatial dims.
``stride=None`` means ``stride = window`` (PyTorch's default). Arguments are
validated in ``__init__`` with the ops' checks (:mod:`cnn_jax._checks`), and kept as
plain Python values in the form they were given (an int stays an int), so the op is
called with what the user wrote.

As Equinox's ``Pool(init, operation, ...)``, one base class per family owns
``__init__`` and ``__call__``; a variant names its op (``_operation``) and, for the
window pools, the attributes the op takes as keywords (``_options``).
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from cnn_jax import ops
from cnn_jax._checks import (
    POOL_PADDING_STRINGS,
    check_bool,
    check_int,
    check_layout,
    check_pool_padding,
    declared_padding,
    is_pairs,
    ntuple,
    resolve_padding,
)


def _is_seq(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


class _WindowPool(nnx.Module):
    """Shared ``__init__`` (window, stride, padding, dilation, ceil_mode, layout) and
    ``__call__`` of the sliding-window pools."""

    _options = ("padding", "dilation", "ceil_mode", "layout")

    @staticmethod
    def _operation(x, *, window, stride, **options):  # the op; each pool names its own
        raise NotImplementedError

    def __init__(
        self, window, stride=None, *, padding=0, dilation=1, ceil_mode=False, layout="channels_last"
    ):
        self._setup(type(self).__name__, window, stride, padding, dilation, ceil_mode, layout)

    def _setup(self, op, window, stride, padding, dilation, ceil_mode, layout):
        # n is fixed by any tuple argument; else the op reads the rank from x (m = 1 here).
        given = [v for v in (window, stride, dilation, padding) if _is_seq(v)]
        m = len(given[0]) if given else 1

        def keep(arg, t):  # an int argument stays an int
            return t if _is_seq(arg) else t[0]

        k = ntuple(window, m, "window", op)
        s = k if stride is None else ntuple(stride, m, "stride", op)
        d = ntuple(dilation, m, "dilation", op)
        stored, low = declared_padding(
            padding,
            m,
            op,
            kernel_size=k,
            stride=s,
            dilation=d,
            allowed_strings=POOL_PADDING_STRINGS,
        )
        if not isinstance(padding, str):
            check_pool_padding(padding, resolve_padding(padding, m, op), k, op)
            if not is_pairs(padding):
                stored = keep(padding, low)
        self.window = keep(window, k)
        self.stride = self.window if stride is None else keep(stride, s)
        self.padding = stored
        self.dilation = keep(dilation, d)
        self._padding_low = low if given else low[0]
        self.ceil_mode = check_bool(ceil_mode, "ceil_mode", op)
        self.layout = check_layout(layout, op)

    @property
    def receptive_field_spec(self) -> tuple:
        """``(window, stride, dilation, padding_low)`` for :func:`cnn_jax.receptive_field`.

        Ints when the window is an int. For ``padding="same"`` the low padding is
        ``(dilation * (window - 1)) // 2`` (exact for stride 1).
        """
        return (self.window, self.stride, self.dilation, self._padding_low)

    def __call__(self, x):
        options = {name: getattr(self, name) for name in self._options}
        return self._operation(x, window=self.window, stride=self.stride, **options)


class MaxPool(_WindowPool):
    """Max pooling over :func:`cnn_jax.ops.max_pool` (PyTorch ``MaxPool{n}d``).

    Args:
      window: int (every spatial dim of a batched input) or tuple of ``n`` ints.
      stride: int, tuple or None (``= window``).
      padding: int or tuple (``<= window // 2``), ``(low, high)`` pairs or a string;
        padded positions never win.
      dilation: int or tuple.
      ceil_mode: round the output size up, as PyTorch.
      layout: ``"channels_last"`` or ``"channels_first"``.

    Output size per dim: ``floor((in + lo + hi - dilation * (window - 1) - 1) /
    stride) + 1`` (``ceil`` with ``ceil_mode``).

    >>> import jax.numpy as jnp

    >>> MaxPool(2)(jnp.ones((1, 8, 8, 3))).shape
    (1, 4, 4, 3)
    """

    _operation = staticmethod(ops.max_pool)


class MinPool(_WindowPool):
    """Min pooling over :func:`cnn_jax.ops.min_pool`; arguments and shapes as :class:`MaxPool`."""

    _operation = staticmethod(ops.min_pool)


class AvgPool(_WindowPool):
    """Average pooling over :func:`cnn_jax.ops.avg_pool` (PyTorch ``AvgPool{n}d``).

    Args:
      window, stride, padding, ceil_mode, layout: as :class:`MaxPool`.
      count_include_pad: count padded zeros in the divisor.
      divisor_override: a positive int divisor instead of the window size, or None.

    >>> import jax.numpy as jnp

    >>> AvgPool(2)(jnp.ones((1, 8, 8, 3))).shape
    (1, 4, 4, 3)
    """

    _operation = staticmethod(ops.avg_pool)
    _options = ("padding", "ceil_mode", "count_include_pad", "divisor_override", "layout")

    def __init__(
        self,
        window,
        stride=None,
        *,
        padding=0,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
        layout="channels_last",
    ):
        op = "AvgPool"
        self._setup(op, window, stride, padding, 1, ceil_mode, layout)
        self.count_include_pad = check_bool(count_include_pad, "count_include_pad", op)
        self.divisor_override = (
            None
            if divisor_override is None
            else check_int(divisor_override, "divisor_override", op)
        )


class LpPool(_WindowPool):
    """Power-average pooling over :func:`cnn_jax.ops.lp_pool` (PyTorch ``LPPool{n}d``).

    ``y = (sum over the window of x ** p) ** (1 / p)``; no padding, as PyTorch.

    Args:
      p: the power, a number > 0.
      window, stride, ceil_mode, layout: as :class:`MaxPool`.

    >>> import jax.numpy as jnp

    >>> LpPool(2, 2)(jnp.ones((1, 8, 8, 3))).shape
    (1, 4, 4, 3)
    """

    _operation = staticmethod(ops.lp_pool)
    _options = ("p", "ceil_mode", "layout")

    def __init__(self, p, window, stride=None, *, ceil_mode=False, layout="channels_last"):
        op = "LpPool"
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"{op}: p must be a number, got {p!r}")
        if not p > 0:
            raise ValueError(f"{op}: p must be > 0, got {p!r}")
        self.p = p
        self._setup(op, window, stride, 0, 1, ceil_mode, layout)


def _output_size(output_size, op: str):
    """An int >= 1, or a tuple of ints >= 1 / None (None keeps that dim's size)."""
    if _is_seq(output_size):
        if len(output_size) == 0:
            raise ValueError(f"{op}: output_size must have at least one entry, got {output_size!r}")
        return tuple(None if v is None else check_int(v, "output_size", op) for v in output_size)
    return check_int(output_size, "output_size", op)


class _AdaptivePool(nnx.Module):
    """Shared ``__init__`` and ``__call__`` of the adaptive pools.

    No ``receptive_field_spec``: the window depends on the input size.
    """

    def __init__(self, output_size, *, layout="channels_last"):
        self.output_size = _output_size(output_size, type(self).__name__)
        self.layout = check_layout(layout, type(self).__name__)

    def __call__(self, x):
        return self._operation(x, self.output_size, layout=self.layout)


class AdaptiveAvgPool(_AdaptivePool):
    """Adaptive average pooling over :func:`cnn_jax.ops.adaptive_avg_pool`.

    Bin ``i`` of ``out`` over ``in`` spans ``[floor(i * in / out), ceil((i + 1) * in /
    out))``, as PyTorch's ``AdaptiveAvgPool{n}d``.

    Args:
      output_size: int (every spatial dim) or tuple of ints / None (None keeps the
        input size of that dim).
      layout: ``"channels_last"`` or ``"channels_first"``.

    >>> import jax.numpy as jnp

    >>> AdaptiveAvgPool(1)(jnp.ones((2, 7, 7, 3))).shape
    (2, 1, 1, 3)
    """

    _operation = staticmethod(ops.adaptive_avg_pool)


class AdaptiveMaxPool(_AdaptivePool):
    """Adaptive max pooling over :func:`cnn_jax.ops.adaptive_max_pool`.

    Bins and arguments as :class:`AdaptiveAvgPool`; ``AdaptiveMaxPool((2, None))`` maps
    ``(2, 7, 5, 3)`` to ``(2, 2, 5, 3)``.
    """

    _operation = staticmethod(ops.adaptive_max_pool)


class _GlobalPool(nnx.Module):
    """Shared ``__init__`` and ``__call__`` of the global pools."""

    def __init__(self, *, keepdims=False, layout="channels_last"):
        self.keepdims = check_bool(keepdims, "keepdims", type(self).__name__)
        self.layout = check_layout(layout, type(self).__name__)

    def __call__(self, x):
        return self._operation(x, keepdims=self.keepdims, layout=self.layout)


class GlobalAvgPool(_GlobalPool):
    """Mean over all spatial dims via :func:`cnn_jax.ops.global_avg_pool`.

    Args:
      keepdims: keep the spatial dims as size 1 (``(N, 1, ..., 1, C)``); else ``(N, C)``.
      layout: ``"channels_last"`` or ``"channels_first"``.

    >>> import jax.numpy as jnp

    >>> GlobalAvgPool()(jnp.ones((2, 7, 7, 3))).shape
    (2, 3)
    """

    _operation = staticmethod(ops.global_avg_pool)


class GlobalMaxPool(_GlobalPool):
    """Max over all spatial dims via :func:`cnn_jax.ops.global_max_pool`; arguments as
    :class:`GlobalAvgPool` (with ``keepdims=True``, ``(2, 7, 7, 3)`` gives ``(2, 1, 1, 3)``)."""

    _operation = staticmethod(ops.global_max_pool)
