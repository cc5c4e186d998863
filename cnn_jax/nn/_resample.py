"""Resampling layers: ``nnx.Module`` wrappers over ``upsample`` and pixel (un)shuffle.

They hold only static config (validated in ``__init__``, kept as plain Python values)
and call the op. They change the sampling grid, so they have no
``receptive_field_spec`` and :func:`cnn_jax.receptive_field` skips them.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from cnn_jax import ops
from cnn_jax._checks import (
    UPSAMPLE_METHODS,
    check_bool,
    check_choice,
    check_int,
    check_layout,
    ntuple,
)


def _scale(value, op: str):
    """A number > 0 or a non-empty tuple of numbers > 0 (floats allowed, unlike ntuple)."""
    items = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    if not items:
        raise ValueError(f"{op}: scale_factor must have at least one entry, got {value!r}")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(
                f"{op}: scale_factor must be a number or a tuple of numbers, got {value!r}"
            )
        if not v > 0:
            raise ValueError(f"{op}: scale_factor must be > 0 in every dim, got {value!r}")
    return items if isinstance(value, Sequence) else value


class Upsample(nnx.Module):
    """Nearest or (bi/tri)linear resampling via :func:`cnn_jax.ops.upsample`.

    Equal to ``torch.nn.Upsample`` / ``F.interpolate`` with ``mode="nearest"``,
    ``"linear"``/``"bilinear"``/``"trilinear"`` (``method="linear"`` picks by rank).

    Args:
      scale_factor: number or tuple of numbers > 0; output ``floor(in * scale)``.
      size: int or tuple of ints, the output spatial size. Exactly one of
        ``scale_factor`` and ``size``.
      method: ``"nearest"`` or ``"linear"``.
      align_corners: align the corner pixels (``method="linear"`` only, as PyTorch).
      layout: ``"channels_last"`` or ``"channels_first"``.

    >>> import jax.numpy as jnp

    >>> Upsample(2)(jnp.ones((1, 4, 4, 3))).shape
    (1, 8, 8, 3)
    """

    def __init__(
        self,
        scale_factor=None,
        *,
        size=None,
        method="nearest",
        align_corners=False,
        layout="channels_last",
    ):
        op = "Upsample"
        if (scale_factor is None) == (size is None):
            raise ValueError(
                f"{op}: exactly one of scale_factor and size must be given, got "
                f"scale_factor={scale_factor!r}, size={size!r}"
            )
        self.scale_factor = None if scale_factor is None else _scale(scale_factor, op)
        if size is None:
            self.size = None
        elif isinstance(size, Sequence) and not isinstance(size, str):
            self.size = ntuple(size, len(size), "size", op)
        else:
            self.size = check_int(size, "size", op)
        self.method = check_choice(method, UPSAMPLE_METHODS, "method", op)
        align_corners = check_bool(align_corners, "align_corners", op)
        if align_corners and self.method == "nearest":
            raise ValueError(
                f"{op}: align_corners must be False for method='nearest' (it only applies "
                f"to 'linear'), got align_corners={align_corners!r}"
            )
        self.align_corners = align_corners
        self.layout = check_layout(layout, op)

    def __call__(self, x):
        return ops.upsample(
            x,
            self.scale_factor,
            size=self.size,
            method=self.method,
            align_corners=self.align_corners,
            layout=self.layout,
        )


class _Rearrange(nnx.Module):
    """Shared ``__call__`` of the pixel (un)shuffles: the op with ``factor`` and layout."""

    _factor: str  # the factor's argument and attribute name

    def _setup(self, factor, layout):
        setattr(self, self._factor, check_int(factor, self._factor, type(self).__name__))
        self.layout = check_layout(layout, type(self).__name__)

    def __call__(self, x):
        return self._operation(x, getattr(self, self._factor), layout=self.layout)


class PixelShuffle(_Rearrange):
    """Sub-pixel upsampling via :func:`cnn_jax.ops.pixel_shuffle` (``torch.nn.PixelShuffle``).

    ``(N, H, W, C * r**2)`` -> ``(N, H * r, W * r, C)`` (channels_last; channels_first
    is PyTorch's ``(N, C * r**2, H, W)`` -> ``(N, C, H * r, W * r)``).

    Args:
      upscale_factor: ``r``, an int >= 1.
      layout: ``"channels_last"`` or ``"channels_first"``.

    >>> import jax.numpy as jnp

    >>> PixelShuffle(2)(jnp.ones((1, 4, 4, 12))).shape
    (1, 8, 8, 3)
    """

    _operation = staticmethod(ops.pixel_shuffle)
    _factor = "upscale_factor"

    def __init__(self, upscale_factor, *, layout="channels_last"):
        self._setup(upscale_factor, layout)


class PixelUnshuffle(_Rearrange):
    """Inverse of :class:`PixelShuffle` via :func:`cnn_jax.ops.pixel_unshuffle`:
    ``(N, H * r, W * r, C)`` -> ``(N, H, W, C * r**2)`` (channels_last), for
    ``downscale_factor`` ``r`` (an int >= 1) and ``layout`` as :class:`PixelShuffle`."""

    _operation = staticmethod(ops.pixel_unshuffle)
    _factor = "downscale_factor"

    def __init__(self, downscale_factor, *, layout="channels_last"):
        self._setup(downscale_factor, layout)
