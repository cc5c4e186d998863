"""PyTorch's default initialisers for conv layers, as flax-style ``init(key, shape, dtype)``.

``torch.nn.Conv*d.reset_parameters`` draws the weight with
``kaiming_uniform_(w, a=sqrt(5))`` and the bias from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
With ``a = sqrt(5)`` the kaiming gain is ``sqrt(2 / (1 + a**2)) = sqrt(1/3)``, so the
weight bound ``gain * sqrt(3 / fan_in)`` is also ``1 / sqrt(fan_in)``.

``fan_in`` is what ``torch.nn.init._calculate_fan_in_and_fan_out`` reads from the
PyTorch weight: ``weight.size(1) * prod(kernel_size)``. That is
``in_features // groups * prod(k)`` for a convolution (weight ``(O, I // g, *k)``)
and ``out_features // groups * prod(k)`` for a transposed one (weight ``(I, O // g, *k)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

_MIN_DRAW = 4096


def conv_fan_in(in_channels: int, kernel_size: Sequence[int], groups: int = 1) -> int:
    """PyTorch's ``fan_in`` of a ``Conv*d`` weight: ``in_channels // groups * prod(k)``."""
    return in_channels // groups * math.prod(kernel_size)


def conv_transpose_fan_in(out_channels: int, kernel_size: Sequence[int], groups: int = 1) -> int:
    """PyTorch's ``fan_in`` of a ``ConvTranspose*d`` weight: ``out // groups * prod(k)``.

    PyTorch reads ``weight.size(1)`` of the ``(I, O // g, *k)`` weight, so a transposed
    conv's "fan_in" counts its output channels.
    """
    return out_channels // groups * math.prod(kernel_size)


def uniform(bound: float):
    """Initialiser drawing from ``U(-bound, bound)`` (``bound = 0`` gives zeros).

    >>> init = uniform(0.5)
    >>> init(jax.random.key(0), (3,), jnp.float32).shape
    (3,)
    """

    def init(key, shape, dtype=jnp.float32):
        # Draw a power-of-two-sized vector (at least 4096) and cut it to shape: XLA
        # compiles the random-bits kernel once per size (~0.3 s each on CPU), so a model
        # with dozens of parameter shapes compiles a handful of draws, not one per shape.
        size = math.prod(shape)
        bucket = max(_MIN_DRAW, 1 << max(size - 1, 0).bit_length())
        flat = jax.random.uniform(key, (bucket,), dtype, minval=-bound, maxval=bound)
        return flat[:size].reshape(shape)

    return init


def kaiming_uniform(fan_in: int, a: float = math.sqrt(5.0)):
    """``torch.nn.init.kaiming_uniform_(w, a=a)`` (leaky-relu gain) for a given ``fan_in``.

    ``bound = sqrt(2 / (1 + a**2)) * sqrt(3 / fan_in)``; with the default ``a = sqrt(5)``
    (PyTorch's conv default) that is ``1 / sqrt(fan_in)``.

    Args:
      fan_in: the weight's fan-in as PyTorch computes it (see :func:`conv_fan_in`).
      a: negative slope of the leaky ReLU the gain is computed for.

    Returns:
      An initialiser ``init(key, shape, dtype)``.

    >>> w = kaiming_uniform(27)(jax.random.key(0), (3, 3, 3, 8), jnp.float32)
    >>> bool(abs(w).max() <= 1 / 27 ** 0.5)
    True
    """
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return uniform(gain * math.sqrt(3.0 / fan_in))


def bias_uniform(fan_in: int):
    """PyTorch's conv bias initialiser: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (zeros if 0)."""
    return uniform(1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)
