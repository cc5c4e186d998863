"""VGG (Simonyan & Zisserman 2015) as torchvision builds it, with and without BatchNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn
from cnn_jax.models._common import (
    check_image,
    check_model_ints,
    check_probability,
    normal_init,
    public_signature,
    torch_flatten,
    torch_linear,
    variant,
)

# torchvision's configurations: output channels of 3x3 convs, "M" a 2x2 max pool.
VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG16_CONFIG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


@public_signature
class VGG(nnx.Module):
    """VGG: stacks of 3x3 convs (padding 1) and 2x2 max pools, then three Linears.

    ``features`` follows ``config`` (torchvision's numbering: each conv is followed by
    [BatchNorm and] ReLU, each taking an index), an adaptive average pool to 7x7, and
    ``classifier = [Linear(512*7*7, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU,
    Dropout, Linear(4096, num_classes)]``. Initialisation is torchvision's (Kaiming
    normal convs, ``N(0, 0.01)`` Linears, zero biases). VGG-11 has 132,863,336
    parameters, VGG-16 138,357,544 (with BatchNorm 132,868,840 and 138,365,992).

    Args:
      num_classes: outputs of the last Linear.
      config: conv widths (at ``width=64``) and ``"M"`` for max pools, e.g.
        :data:`VGG16_CONFIG`.
      batch_norm: BatchNorm after every conv (torchvision's ``vgg16_bn``).
      in_channels: input channels.
      width: channels of the first conv (64); every conv scales with it.
      hidden: width of the two hidden Linears (4096).
      dropout: dropout rate after the hidden Linears (training mode only).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with ``params`` (and ``dropout``) streams.

    Input ``(N, H, W, in_channels)`` with ``H, W >= 2**pools`` (32 for the standard
    configs; 224 in the paper); output ``(N, num_classes)`` logits.

    >>> model = VGG(10, config=VGG11_CONFIG, width=8, hidden=32, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((1, 32, 32, 3))).shape
    (1, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        config=VGG16_CONFIG,
        batch_norm: bool = False,
        in_channels: int = 3,
        width: int = 64,
        hidden: int = 4096,
        dropout: float = 0.5,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "VGG"
        num_classes, in_channels, width, hidden = check_model_ints(
            op, num_classes=num_classes, in_channels=in_channels, width=width, hidden=hidden
        )
        dropout = check_probability(dropout, "dropout", op)
        if not isinstance(batch_norm, bool):
            raise TypeError(f"{op}: batch_norm must be a bool, got {batch_norm!r}")
        if (
            isinstance(config, str)
            or not config
            or not all(
                v == "M" or (isinstance(v, int) and not isinstance(v, bool) and v > 0)
                for v in config
            )
        ):
            raise ValueError(
                f"{op}: config must be a sequence of positive ints and 'M', got {config!r}"
            )
        self.config = tuple(config)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layers, features = [], in_channels
        for v in self.config:
            if v == "M":
                layers.append(nn.MaxPool(2, 2))
                continue
            out = max(1, v * width // 64)
            layers.append(
                nn.Conv(
                    features,
                    out,
                    3,
                    padding=1,
                    kernel_init=nn.kaiming_normal_fan_out,
                    bias_init=nnx.initializers.zeros,
                    **kw,
                )
            )
            if batch_norm:
                layers.append(nn.batch_norm(out, **kw))
            layers.append(jax.nn.relu)
            features = out
        self.features = nnx.Sequential(*layers)
        self.min_size = 2 ** self.config.count("M")
        self.avgpool = nn.AdaptiveAvgPool((7, 7))
        lin = dict(kernel_init=normal_init(0.01), bias_init=nnx.initializers.zeros, **kw)
        self.classifier = nnx.Sequential(
            torch_linear(features * 49, hidden, **lin),
            jax.nn.relu,
            nnx.Dropout(dropout, rngs=rngs),
            torch_linear(hidden, hidden, **lin),
            jax.nn.relu,
            nnx.Dropout(dropout, rngs=rngs),
            torch_linear(hidden, num_classes, **lin),
        )

    def main_path(self) -> list:
        """The convs and pools of ``features`` (read by :func:`cnn_jax.receptive_field`)."""
        return [self.features]

    def __call__(self, x):
        check_image(x, self.min_size, "VGG")
        return self.classifier(torch_flatten(self.avgpool(self.features(x))))


VGG11 = variant(
    VGG,
    "VGG11",
    """VGG-11 (configuration "A"): 132,863,336 params.""",
    config=VGG11_CONFIG,
    batch_norm=False,
)
VGG11BN = variant(
    VGG,
    "VGG11BN",
    """VGG-11 with BatchNorm (torchvision's ``vgg11_bn``).""",
    config=VGG11_CONFIG,
    batch_norm=True,
)
VGG16 = variant(
    VGG,
    "VGG16",
    """VGG-16 (configuration "D"): 138,357,544 params.""",
    config=VGG16_CONFIG,
    batch_norm=False,
)
VGG16BN = variant(
    VGG,
    "VGG16BN",
    """VGG-16 with BatchNorm (torchvision's ``vgg16_bn``).""",
    config=VGG16_CONFIG,
    batch_norm=True,
)
