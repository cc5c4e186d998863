"""Pooling layers: ``nnx.Module`` wrappers holding only static config; they call the ops.

Window arguments follow the ops: an int ``window`` pools every spatial dim of the
(batched) input, the rank coming from ``x``; a tuple fixes the number of spatial dims.
``stride=None`` means ``stride = window`` (PyTorch's default). Arguments are
validated in ``__init__`` with the ops' normalisers, and kept as plain Python values.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from cnn_jax import ops
from cnn_jax.ops._args import check_int, check_layout, is_pairs, ntuple, resolve_padding


# The string forms the pooling ops accept ("causal" is for 1-D convolution only).
POOL_PADDING_STRINGS = ("valid", "same", "full")


def _is_seq(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _check_bool(value, name: str, op: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")
    return value


class _WindowConfig:
    """Validated ``window``, ``stride``, ``dilation`` and ``padding`` of a sliding pool.

    ``n`` is the number of spatial dims when any argument fixes it (a tuple), else
    None (the op reads the rank from ``x``). Each argument keeps the form it was given
    in (an int stays an int), so the op is called with what the user wrote.
    """

    def __init__(self, op, window, stride, padding, dilation):
        given = [v for v in (window, stride, dilation) if _is_seq(v)]
        if _is_seq(padding):
            given.append(padding)
        n = len(given[0]) if given else None
        m = n or 1

        # Keep each argument's form (an int stays an int), so the op sees what the user gave.
        def keep(given, t):
            return t if _is_seq(given) else t[0]

        k = ntuple(window, m, "window", op)
        s = k if stride is None else ntuple(stride, m, "stride", op)
        d = ntuple(dilation, m, "dilation", op)
        if isinstance(padding, str) and padding.lower() == "same":
            low = tuple((dd * (kk - 1)) // 2 for kk, dd in zip(k, d))
            stored = "same"
        else:
            pads = resolve_padding(padding, m, op, kernel_size=k, stride=s, dilation=d,
                                  allowed_strings=POOL_PADDING_STRINGS)
            if not isinstance(padding, str) and not is_pairs(padding):
                # PyTorch's rule, on the undilated window.
                for (p, _), kk in zip(pads, k):
                    if p > kk // 2:
                        raise ValueError(
                            f"{op}: padding must be <= window // 2 in every dim, got "
                            f"padding={padding!r} for window={window!r}"
                        )
            low = tuple(lo for lo, _ in pads)
            if isinstance(padding, str):
                stored = padding.lower()
            elif is_pairs(padding):
                stored = pads
            else:
                stored = keep(padding, low)
        self.window = keep(window, k)
        self.stride = self.window if stride is None else keep(stride, s)
        self.dilation = keep(dilation, d)
        self.padding = stored
        self.padding_low = low if n else low[0]


class _SlidingPool(nnx.Module):
    """Shared attributes of the sliding-window pools."""

    def _setup(self, op, window, stride, padding, dilation, ceil_mode, layout):
        cfg = _WindowConfig(op, window, stride, padding, dilation)
        self.window = cfg.window
        self.stride = cfg.stride
        self.padding = cfg.padding
        self.dilation = cfg.dilation
        self._padding_low = cfg.padding_low
        self.ceil_mode = _check_bool(ceil_mode, "ceil_mode", op)
        self.layout = check_layout(layout, op)

    @property
    def kernel_size(self):
        """The window, under the name the conv layers and ``summary`` use."""
        return self.window

    @property
    def receptive_field_spec(self) -> tuple:
        """``(window, stride, dilation, padding_low)`` for :func:`cnn_jax.receptive_field`.

        Ints when the window is an int. For ``padding="same"`` the low padding is
        ``(dilation * (window - 1)) // 2`` (exact for stride 1).
        """
        return (self.window, self.stride, self.dilation, self._padding_low)


class MaxPool(_SlidingPool):
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

    def __init__(self, window, stride=None, *, padding=0, dilation=1, ceil_mode=False,
                 layout="channels_last"):
        self._setup("MaxPool", window, stride, padding, dilation, ceil_mode, layout)

    def __call__(self, x):
        return ops.max_pool(x, self.window, self.stride, padding=self.padding,
                            dilation=self.dilation, ceil_mode=self.ceil_mode,
                            layout=self.layout)


class MinPool(_SlidingPool):
    """Min pooling over :func:`cnn_jax.ops.min_pool`; arguments as :class:`MaxPool`.

    >>> import jax.numpy as jnp

    >>> MinPool(2)(jnp.ones((1, 8, 8, 3))).shape
    (1, 4, 4, 3)
    """

    def __init__(self, window, stride=None, *, padding=0, dilation=1, ceil_mode=False,
                 layout="channels_last"):
        self._setup("MinPool", window, stride, padding, dilation, ceil_mode, layout)

    def __call__(self, x):
        return ops.min_pool(x, self.window, self.stride, padding=self.padding,
                            dilation=self.dilation, ceil_mode=self.ceil_mode,
                            layout=self.layout)


class AvgPool(_SlidingPool):
    """Average pooling over :func:`cnn_jax.ops.avg_pool` (PyTorch ``AvgPool{n}d``).

    Args:
      window, stride, padding, ceil_mode, layout: as :class:`MaxPool`.
      count_include_pad: count padded zeros in the divisor.
      divisor_override: a positive int divisor instead of the window size, or None.

    >>> import jax.numpy as jnp

    >>> AvgPool(2)(jnp.ones((1, 8, 8, 3))).shape
    (1, 4, 4, 3)
    """

    def __init__(self, window, stride=None, *, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, layout="channels_last"):
        op = "AvgPool"
        self._setup(op, window, stride, padding, 1, ceil_mode, layout)
        self.count_include_pad = _check_bool(count_include_pad, "count_include_pad", op)
        self.divisor_override = (
            None if divisor_override is None
            else check_int(divisor_override, "divisor_override", op)
        )

    def __call__(self, x):
        return ops.avg_pool(x, self.window, self.stride, padding=self.padding,
                            ceil_mode=self.ceil_mode,
                            count_include_pad=self.count_include_pad,
                            divisor_override=self.divisor_override, layout=self.layout)


class LpPool(_SlidingPool):
    """Power-average pooling over :func:`cnn_jax.ops.lp_pool` (PyTorch ``LPPool{n}d``).

    ``y = (sum over the window of x ** p) ** (1 / p)``; no padding, as PyTorch.

    Args:
      p: the power, a number > 0.
      window, stride, ceil_mode, layout: as :class:`MaxPool`.

    >>> import jax.numpy as jnp

    >>> LpPool(2, 2)(jnp.ones((1, 8, 8, 3))).shape
    (1, 4, 4, 3)
    """

    def __init__(self, p, window, stride=None, *, ceil_mode=False, layout="channels_last"):
        op = "LpPool"
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"{op}: p must be a number, got {p!r}")
        if not p > 0:
            raise ValueError(f"{op}: p must be > 0, got {p!r}")
        self.p = p
        self._setup(op, window, stride, 0, 1, ceil_mode, layout)

    def __call__(self, x):
        return ops.lp_pool(x, self.p, self.window, self.stride, ceil_mode=self.ceil_mode,
                           layout=self.layout)


def _output_size(output_size, op: str):
    """An int >= 1, or a tuple of ints >= 1 / None (None keeps that dim's size)."""
    if _is_seq(output_size):
        if len(output_size) == 0:
            raise ValueError(f"{op}: output_size must have at least one entry, got {output_size!r}")
        return tuple(None if v is None else check_int(v, "output_size", op) for v in output_size)
    return check_int(output_size, "output_size", op)


class AdaptiveAvgPool(nnx.Module):
    """Adaptive average pooling over :func:`cnn_jax.ops.adaptive_avg_pool`.

    Bin ``i`` of ``out`` over ``in`` spans ``[floor(i * in / out), ceil((i + 1) * in /
    out))``, as PyTorch's ``AdaptiveAvgPool{n}d``.

    Args:
      output_size: int (every spatial dim) or tuple of ints / None (None keeps the
        input size of that dim).
      layout: ``"channels_last"`` or ``"channels_first"``.

    No ``receptive_field_spec``: the window depends on the input size.

    >>> import jax.numpy as jnp

    >>> AdaptiveAvgPool(1)(jnp.ones((2, 7, 7, 3))).shape
    (2, 1, 1, 3)
    """

    def __init__(self, output_size, *, layout="channels_last"):
        self.output_size = _output_size(output_size, "AdaptiveAvgPool")
        self.layout = check_layout(layout, "AdaptiveAvgPool")

    def __call__(self, x):
        return ops.adaptive_avg_pool(x, self.output_size, layout=self.layout)


class AdaptiveMaxPool(nnx.Module):
    """Adaptive max pooling over :func:`cnn_jax.ops.adaptive_max_pool`; as :class:`AdaptiveAvgPool`.

    >>> import jax.numpy as jnp

    >>> AdaptiveMaxPool((2, None))(jnp.ones((2, 7, 5, 3))).shape
    (2, 2, 5, 3)
    """

    def __init__(self, output_size, *, layout="channels_last"):
        self.output_size = _output_size(output_size, "AdaptiveMaxPool")
        self.layout = check_layout(layout, "AdaptiveMaxPool")

    def __call__(self, x):
        return ops.adaptive_max_pool(x, self.output_size, layout=self.layout)


class GlobalAvgPool(nnx.Module):
    """Mean over all spatial dims via :func:`cnn_jax.ops.global_avg_pool`.

    Args:
      keepdims: keep the spatial dims as size 1 (``(N, 1, ..., 1, C)``); else ``(N, C)``.
      layout: ``"channels_last"`` or ``"channels_first"``.

    >>> import jax.numpy as jnp

    >>> GlobalAvgPool()(jnp.ones((2, 7, 7, 3))).shape
    (2, 3)
    """

    def __init__(self, *, keepdims=False, layout="channels_last"):
        self.keepdims = _check_bool(keepdims, "keepdims", "GlobalAvgPool")
        self.layout = check_layout(layout, "GlobalAvgPool")

    def __call__(self, x):
        return ops.global_avg_pool(x, keepdims=self.keepdims, layout=self.layout)


class GlobalMaxPool(nnx.Module):
    """Max over all spatial dims via :func:`cnn_jax.ops.global_max_pool`; as :class:`GlobalAvgPool`.

    >>> import jax.numpy as jnp

    >>> GlobalMaxPool(keepdims=True)(jnp.ones((2, 7, 7, 3))).shape
    (2, 1, 1, 3)
    """

    def __init__(self, *, keepdims=False, layout="channels_last"):
        self.keepdims = _check_bool(keepdims, "keepdims", "GlobalMaxPool")
        self.layout = check_layout(layout, "GlobalMaxPool")

    def __call__(self, x):
        return ops.global_max_pool(x, keepdims=self.keepdims, layout=self.layout)
