"""The seed exercise's network: ten conv layers, three pools, global pool, one Linear."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn
from cnn_jax.models._common import check_model_ints, public_signature, torch_linear

POOL_AFTER = (4, 6, 8)  # 1-based conv layers followed by a 2x2 max pool


@public_signature
class SimpleCNN(nnx.Module):
    """Ten 3x3 conv-BN-ReLU layers, 2x2 max pooling after layers 4, 6 and 8, global
    average pooling after layer 10 and one ``Linear(channels, num_classes)``.

    Channels are ``width`` for layers 1-4 and double after every pool: ``2 * width``
    (layers 5-6), ``4 * width`` (7-8), ``8 * width`` (9-10). Convs keep the size
    (padding 1), so only the pools shrink it: 32x32 -> 4x4 before the global pool;
    8x8 inputs (scikit-learn's digits) reach 1x1.

    Args:
      num_classes: outputs of ``fc``.
      in_channels: input channels.
      width: channels of the first four layers.
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Input ``(N, H, W, in_channels)`` with ``H, W >= 8``; output ``(N, num_classes)``.

    >>> model = SimpleCNN(10, in_channels=1, width=8, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 8, 8, 1))).shape
    (2, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        width: int = 32,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "SimpleCNN"
        num_classes, in_channels, width = check_model_ints(
            op, num_classes=num_classes, in_channels=in_channels, width=width
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layers, features = [], in_channels
        for i in range(1, 11):
            out = width * 2 ** sum(i > p for p in POOL_AFTER)
            layers.append(nn.conv_bn_act(features, out, 3, **kw))
            features = out
        self.layers = nnx.List(layers)
        self.pool = nn.MaxPool(2)
        self.global_pool = nn.GlobalAvgPool()
        self.fc = torch_linear(features, num_classes, **kw)

    def main_path(self) -> list:
        """Convs and pools in call order (read by :func:`cnn_jax.receptive_field`)."""
        path = []
        for i, layer in enumerate(self.layers, start=1):
            path.append(layer)
            if i in POOL_AFTER:
                path.append(self.pool)
        return path

    def __call__(self, x):
        if min(x.shape[1:3]) < 8:
            raise ValueError(
                f"SimpleCNN: x must be (N, H, W, C) with H, W >= 8 (three 2x2 pools), "
                f"got x.shape={tuple(x.shape)}"
            )
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if i in POOL_AFTER:
                x = self.pool(x)
        return self.fc(self.global_pool(x))
