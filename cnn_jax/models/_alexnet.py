"""AlexNet (Krizhevsky et al. 2012) in torchvision's single-tower variant, with its names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn
from cnn_jax.models._common import (
    check_image,
    check_model_ints,
    check_probability,
    public_signature,
    torch_flatten,
    torch_linear,
)

# (output channels at width 64, kernel, stride, padding, max pool after)
ALEXNET_CONVS = (
    (64, 11, 4, 2, True),
    (192, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, False),
    (256, 3, 1, 1, True),
)
MIN_SIZE = 63  # the smallest input that survives the stride-4 conv and three 3x3/2 pools


@public_signature
class AlexNet(nnx.Module):
    """AlexNet as torchvision builds it (61,100,840 parameters with 1000 classes).

    ``features``: conv 11x11/4 (64) - ReLU - max pool 3/2 - conv 5x5 (192) - ReLU -
    max pool - three 3x3 convs (384, 256, 256) with ReLU - max pool; an adaptive
    average pool to 6x6; ``classifier``: dropout, Linear(9216, 4096), ReLU, dropout,
    Linear(4096, 4096), ReLU, Linear(4096, num_classes). Names follow torchvision
    (``features.0``, ``classifier.6``), so :func:`cnn_jax.models.load_torch_state_dict`
    reads its weights; initialisation is PyTorch's default.

    Args:
      num_classes: outputs of the last Linear.
      in_channels: input channels.
      width: channels of the first conv (64); the others scale with it (3x, 6x, 4x, 4x).
      hidden: width of the two hidden Linear layers (4096).
      dropout: dropout rate before the hidden Linears (training mode only).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with ``params`` (and ``dropout``) streams.

    Input ``(N, H, W, in_channels)`` with ``H, W >= 63`` (224 in the paper); output
    ``(N, num_classes)`` logits.

    >>> model = AlexNet(10, width=8, hidden=32, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((1, 64, 64, 3))).shape
    (1, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        width: int = 64,
        hidden: int = 4096,
        dropout: float = 0.5,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "AlexNet"
        num_classes, in_channels, width, hidden = check_model_ints(
            op, num_classes=num_classes, in_channels=in_channels, width=width, hidden=hidden
        )
        dropout = check_probability(dropout, "dropout", op)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layers, features = [], in_channels
        for channels, k, s, p, pool in ALEXNET_CONVS:
            out = channels * width // 64
            layers += [nn.Conv(features, out, k, stride=s, padding=p, **kw), jax.nn.relu]
            if pool:
                layers.append(nn.MaxPool(3, 2))
            features = out
        self.features = nnx.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool((6, 6))
        self.classifier = nnx.Sequential(
            nnx.Dropout(dropout, rngs=rngs),
            torch_linear(features * 36, hidden, **kw),
            jax.nn.relu,
            nnx.Dropout(dropout, rngs=rngs),
            torch_linear(hidden, hidden, **kw),
            jax.nn.relu,
            torch_linear(hidden, num_classes, **kw),
        )

    def main_path(self) -> list:
        """The convs and pools of ``features`` (read by :func:`cnn_jax.receptive_field`)."""
        return [self.features]

    def __call__(self, x):
        check_image(x, MIN_SIZE, "AlexNet")
        return self.classifier(torch_flatten(self.avgpool(self.features(x))))
