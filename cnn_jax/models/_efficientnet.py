"""EfficientNet (Tan & Le 2019) as torchvision builds it, with torchvision's names.

MBConv blocks: expand 1x1 - depthwise kxk - squeeze-excitation - project 1x1, SiLU
activations, and :class:`cnn_jax.nn.StochasticDepth` on the residual branch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn
from cnn_jax.models._common import (
    check_model_ints,
    check_probability,
    public_signature,
    torch_linear,
    uniform_init,
    variant,
)
from cnn_jax.models._mobilenet import make_divisible

# B0's stages: (expand ratio, kernel, first stride, input channels, output channels, blocks).
EFFICIENTNET_B0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class MBConv(nnx.Module):
    """EfficientNet's mobile inverted bottleneck (torchvision ``MBConv``).

    ``block = [expand 1x1 conv-BN-SiLU (when expand_ratio != 1), depthwise kxk
    conv-BN-SiLU (stride), SqueezeExcitation(squeeze = in_features // 4, SiLU),
    project 1x1 conv-BN]``; with stride 1 and equal channels the input is added back
    after :class:`cnn_jax.nn.StochasticDepth`.

    Args:
      in_features, out_features: channels.
      kernel_size: of the depthwise conv (3 or 5 in B0).
      stride: of the depthwise conv.
      expand_ratio: hidden width ``make_divisible(in_features * expand_ratio, 8)``.
      stochastic_depth_prob: drop rate of the residual branch in training.
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with ``params`` (and ``dropout``) streams.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6,
        stochastic_depth_prob: float = 0.0,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        hidden = make_divisible(in_features * expand_ratio, 8)
        layers = []
        if hidden != in_features:
            layers.append(nn.conv_bn_act(in_features, hidden, 1, activation=jax.nn.silu, **kw))
        layers.append(
            nn.conv_bn_act(
                hidden,
                hidden,
                kernel_size,
                stride=stride,
                groups=hidden,
                activation=jax.nn.silu,
                **kw,
            )
        )
        layers.append(
            nn.SqueezeExcitation(hidden, max(1, in_features // 4), activation=jax.nn.silu, **kw)
        )
        layers.append(nn.conv_bn_act(hidden, out_features, 1, activation=None, **kw))
        self.block = nnx.Sequential(*layers)
        self.stochastic_depth = nn.StochasticDepth(stochastic_depth_prob, "row", rngs=rngs)
        self.use_res_connect = stride == 1 and in_features == out_features

    def main_path(self) -> list:
        """The block's layers in order (the squeeze-excitation adds nothing)."""
        return [self.block]

    def __call__(self, x):
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


@public_signature
class EfficientNet(nnx.Module):
    """EfficientNet-B0..B7 layout: a stem, seven stages of MBConv blocks, a 1x1 head.

    ``features[0]`` is a 3x3/2 conv-BN-SiLU, ``features[1..7]`` the stages (each an
    ``nnx.Sequential`` of :class:`MBConv`), ``features[8]`` a 1x1 conv-BN-SiLU to
    ``4 * last stage's channels``; then a global average pool and ``classifier =
    [Dropout, Linear]``. Channels are scaled by ``width_mult`` (rounded to multiples of
    8), block counts by ``depth_mult`` (rounded up). The stochastic-depth rate grows
    linearly from 0 to ``stochastic_depth_prob`` over the blocks. Names and
    initialisation follow torchvision (B0: 5,288,548 parameters).

    Args:
      num_classes: outputs of the classifier.
      in_channels: input channels.
      width_mult, depth_mult: compound-scaling multipliers (1.0 for B0).
      dropout: dropout rate before the classifier (training mode only).
      stochastic_depth_prob: the last block's stochastic-depth rate (0.2).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with ``params`` (and ``dropout``) streams.

    Input ``(N, H, W, in_channels)``; output ``(N, num_classes)`` logits; the spatial
    size shrinks by 32 before the pool (224 in the paper; 32x32 works).

    >>> model = EfficientNet(10, width_mult=0.25, depth_mult=0.25, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((1, 32, 32, 3))).shape
    (1, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        dropout: float = 0.2,
        stochastic_depth_prob: float = 0.2,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "EfficientNet"
        num_classes, in_channels = check_model_ints(
            op, num_classes=num_classes, in_channels=in_channels
        )
        for name, value in (("width_mult", width_mult), ("depth_mult", depth_mult)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{op}: {name} must be a positive number, got {value!r}")
        dropout = check_probability(dropout, "dropout", op)
        stochastic_depth_prob = check_probability(
            stochastic_depth_prob, "stochastic_depth_prob", op
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        def channels(c):
            return make_divisible(c * width_mult, 8)

        stages = [
            (t, k, s, channels(cin), channels(cout), int(math.ceil(n * depth_mult)))
            for t, k, s, cin, cout, n in EFFICIENTNET_B0_STAGES
        ]
        total = sum(n for *_, n in stages)
        layers = [
            nn.conv_bn_act(in_channels, stages[0][3], 3, stride=2, activation=jax.nn.silu, **kw)
        ]
        block_id = 0
        for t, k, s, cin, cout, n in stages:
            blocks = []
            for i in range(n):
                # torchvision: rate = prob * block_id / total, the first block at 0.
                rate = stochastic_depth_prob * block_id / total
                blocks.append(
                    MBConv(
                        cin if i == 0 else cout,
                        cout,
                        kernel_size=k,
                        stride=s if i == 0 else 1,
                        expand_ratio=t,
                        stochastic_depth_prob=rate,
                        **kw,
                    )
                )
                block_id += 1
            layers.append(nnx.Sequential(*blocks))
        self.last_channel = 4 * stages[-1][4]
        layers.append(
            nn.conv_bn_act(stages[-1][4], self.last_channel, 1, activation=jax.nn.silu, **kw)
        )
        self.features = nnx.Sequential(*layers)
        self.avgpool = nn.GlobalAvgPool()
        init = uniform_init(1.0 / math.sqrt(num_classes))  # torchvision: U(+-1/sqrt(out))
        self.classifier = nnx.Sequential(
            nnx.Dropout(dropout, rngs=rngs),
            torch_linear(
                self.last_channel,
                num_classes,
                kernel_init=init,
                bias_init=nnx.initializers.zeros,
                **kw,
            ),
        )

    def main_path(self) -> list:
        """Stem conv, every MBConv's convs, the head conv (for receptive fields)."""
        return [self.features]

    def __call__(self, x):
        return self.classifier(self.avgpool(self.features(x)))


EfficientNetB0 = variant(
    EfficientNet,
    "EfficientNetB0",
    """EfficientNet-B0: :class:`EfficientNet` with ``width_mult = depth_mult = 1``
    (5,288,548 params), torchvision's ``efficientnet_b0``.""",
    width_mult=1.0,
    depth_mult=1.0,
)
