"""The default ``cnn-jax train`` network: the anchors' two-conv CNN, at any input size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn
from cnn_jax.models._common import check_model_ints, public_signature, torch_linear


@public_signature
class DigitsCNN(nnx.Module):
    """Two 3x3 conv-ReLU layers (``width``, ``2 * width`` channels, padding 1), one 2x2
    max pool and one Linear: the network of the hand-written training loops that
    ``cnn-jax train`` is measured against, sized for scikit-learn's 8x8 digits.

    Args:
      num_classes: outputs of ``fc``.
      in_channels: input channels.
      input_size: spatial input size ``S`` or ``(H, W)``, even, >= 2 (sets ``fc``'s inputs).
      width: channels of the first conv.
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Input ``(N, H, W, in_channels)``; output ``(N, num_classes)``.

    >>> model = DigitsCNN(10, in_channels=1, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 8, 8, 1))).shape
    (2, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        input_size=8,
        width: int = 32,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "DigitsCNN"
        num_classes, in_channels, width = check_model_ints(
            op, num_classes=num_classes, in_channels=in_channels, width=width
        )
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if h < 2 or w < 2 or h % 2 or w % 2:
            raise ValueError(
                f"{op}: input_size must be even and >= 2 (one 2x2 pool), got {input_size!r}"
            )
        self.input_size = (h, w)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = nn.Conv(in_channels, width, 3, padding=1, **kw)
        self.conv2 = nn.Conv(width, 2 * width, 3, padding=1, **kw)
        self.pool = nn.MaxPool(2)
        self.fc = torch_linear((h // 2) * (w // 2) * 2 * width, num_classes, **kw)

    def main_path(self) -> list:
        """Convs and pools in call order (read by :func:`cnn_jax.receptive_field`)."""
        return [self.conv1, self.conv2, self.pool]

    def __call__(self, x):
        if x.ndim != 4 or tuple(x.shape[1:3]) != self.input_size:
            raise ValueError(
                f"DigitsCNN: x must be (N, H, W, C) with (H, W) = input_size="
                f"{self.input_size}, got x.shape={tuple(x.shape)}"
            )
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = self.pool(x)
        return self.fc(x.reshape(x.shape[0], -1))
