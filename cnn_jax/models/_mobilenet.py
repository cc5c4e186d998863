"""MobileNetV2 (Sandler et al. 2018) as torchvision builds it, with torchvision's names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn
from cnn_jax.models._common import check_model_ints, normal_init, public_signature, torch_linear

# (expand ratio t, channels c, repeats n, first stride s), from the paper's Table 2.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never below 90% of it (torchvision)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


@public_signature
class MobileNetV2(nnx.Module):
    """MobileNetV2: inverted residuals with linear bottlenecks (3,504,872 params).

    ``features[0]`` is a 3x3/2 conv-BN-ReLU6 to 32 channels, ``features[1..17]`` the
    inverted residual blocks of the paper's table, ``features[18]`` a 1x1 conv-BN-ReLU6
    to 1280 channels; then a global average pool and ``classifier = [Dropout,
    Linear]``. Widths are scaled by ``width_mult`` and rounded to multiples of 8 (the
    last conv keeps 1280 for ``width_mult <= 1``). Names and initialisation follow
    torchvision, so :func:`cnn_jax.models.load_torch_state_dict` reads its weights.

    Args:
      num_classes: outputs of the classifier.
      in_channels: input channels.
      width_mult: channel multiplier.
      dropout: dropout rate before the classifier (active in ``.train()`` mode only).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with ``params`` (and, for dropout, ``dropout``) streams.

    Input ``(N, H, W, in_channels)``; output ``(N, num_classes)`` logits; the spatial
    size shrinks by 32 before the pool.

    >>> model = MobileNetV2(10, width_mult=0.25, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((1, 32, 32, 3))).shape
    (1, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "MobileNetV2"
        num_classes, in_channels = check_model_ints(
            op, num_classes=num_classes, in_channels=in_channels
        )
        if (
            isinstance(width_mult, bool)
            or not isinstance(width_mult, (int, float))
            or width_mult <= 0
        ):
            raise ValueError(f"{op}: width_mult must be a positive number, got {width_mult!r}")
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not 0 <= dropout < 1
        ):
            raise ValueError(f"{op}: dropout must be in [0, 1), got {dropout!r}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        features_in = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        layers = [
            nn.conv_bn_act(in_channels, features_in, 3, stride=2, activation=jax.nn.relu6, **kw)
        ]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(
                    nn.InvertedResidual(
                        features_in, out, stride=s if i == 0 else 1, expand_ratio=t, **kw
                    )
                )
                features_in = out
        layers.append(
            nn.conv_bn_act(features_in, self.last_channel, 1, activation=jax.nn.relu6, **kw)
        )
        self.features = nnx.Sequential(*layers)
        self.avgpool = nn.GlobalAvgPool()
        self.classifier = nnx.Sequential(
            nnx.Dropout(dropout, rngs=rngs),
            torch_linear(
                self.last_channel,
                num_classes,
                kernel_init=normal_init(0.01),
                bias_init=nnx.initializers.zeros,
                **kw,
            ),
        )

    def main_path(self) -> list:
        """Every conv of ``features`` in order (read by :func:`cnn_jax.receptive_field`)."""
        return [self.features]

    def __call__(self, x):
        return self.classifier(self.avgpool(self.features(x)))
