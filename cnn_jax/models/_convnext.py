"""ConvNeXt (Liu et al. 2022) as torchvision builds it, with torchvision's names.

Tensors stay channels_last throughout, so torchvision's ``Permute`` layers and its
channels-first ``LayerNorm2d`` become plain channels-last ``LayerNorm``s here; the
Sequential indices keep torchvision's numbering, so its weights load by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn
from cnn_jax.models._common import (
    check_image,
    check_model_int,
    check_model_ints,
    check_probability,
    public_signature,
    variant,
)

LN_EPSILON = 1e-6
_trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)
_gelu = partial(jax.nn.gelu, approximate=False)  # torch.nn.GELU's default (erf)


def _identity(x):
    """Stands where torchvision permutes to and from channels-last (ours already is)."""
    return x


def _layer_norm(features, *, dtype, param_dtype, rngs):
    return nnx.LayerNorm(
        features,
        epsilon=LN_EPSILON,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class CNBlock(nnx.Module):
    """A ConvNeXt block (torchvision ``CNBlock``).

    ``x + stochastic_depth(layer_scale * block(x))`` with ``block = [7x7 depthwise conv,
    (permute), LayerNorm, Linear(C, 4C), GELU, Linear(4C, C), (permute)]``.

    Args:
      features: channels ``C``.
      layer_scale: initial value of the per-channel ``layer_scale`` (1e-6).
      stochastic_depth_prob: drop rate of the branch in training.
      dtype, param_dtype, rngs: as the other blocks.
    """

    def __init__(
        self,
        features: int,
        *,
        layer_scale: float = 1e-6,
        stochastic_depth_prob: float = 0.0,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        init = dict(kernel_init=_trunc_normal, bias_init=nnx.initializers.zeros)
        self.block = nnx.Sequential(
            nn.Conv(features, features, 7, padding=3, groups=features, **init, **kw),
            _identity,
            _layer_norm(features, **kw),
            nnx.Linear(features, 4 * features, **init, **kw),
            _gelu,
            nnx.Linear(4 * features, features, **init, **kw),
            _identity,
        )
        self.layer_scale = nnx.Param(jnp.full((features,), layer_scale, param_dtype))
        self.stochastic_depth = nn.StochasticDepth(stochastic_depth_prob, "row", rngs=rngs)

    def torch_weights(self) -> list:
        """PyTorch's ``layer_scale`` is ``(C, 1, 1)``; ours is ``(C,)`` (to, from PyTorch)."""
        return [
            ("layer_scale", "layer_scale", lambda w: w.reshape(-1), lambda w: w.reshape(-1, 1, 1))
        ]

    def main_path(self) -> list:
        return [self.block.layers[0]]

    def __call__(self, x):
        scale = self.layer_scale[...].astype(x.dtype)
        out = self.block(x) * scale.reshape((1,) * (x.ndim - 1) + (-1,))
        return x + self.stochastic_depth(out)


@public_signature
class ConvNeXt(nnx.Module):
    """ConvNeXt: a 4x4/4 "patchify" stem, stages of :class:`CNBlock`, 2x2/2 downsampling.

    ``features[0] = [Conv 4x4/4, LayerNorm]``; then for each stage ``i`` a Sequential of
    ``depths[i]`` blocks of width ``dims[i]``, and between stages ``[LayerNorm, Conv
    2x2/2]``; global average pool; ``classifier = [LayerNorm, (flatten), Linear]``.
    The stochastic-depth rate grows linearly from 0 to ``stochastic_depth_prob`` over
    the blocks. Names and initialisation (truncated normal, std 0.02) follow
    torchvision; ConvNeXt-T has 28,589,128 parameters.

    Args:
      num_classes: outputs of the classifier.
      depths: blocks per stage (``(3, 3, 9, 3)`` for ConvNeXt-T).
      dims: channels per stage (``(96, 192, 384, 768)``).
      in_channels: input channels.
      stochastic_depth_prob: the last block's stochastic-depth rate (0.1 for T).
      layer_scale: initial layer-scale value (1e-6).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with ``params`` (and ``dropout``) streams.

    Input ``(N, H, W, in_channels)`` with ``H, W >= 4 * 2**(stages - 1)`` (32 for four
    stages); output ``(N, num_classes)`` logits.

    >>> model = ConvNeXt(10, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), rngs=nnx.Rngs(0))
    >>> model(jnp.ones((1, 32, 32, 3))).shape
    (1, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        in_channels: int = 3,
        stochastic_depth_prob: float = 0.1,
        layer_scale: float = 1e-6,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "ConvNeXt"
        num_classes, in_channels = check_model_ints(
            op, num_classes=num_classes, in_channels=in_channels
        )
        for name, value in (("depths", depths), ("dims", dims)):
            if isinstance(value, str) or not isinstance(value, Sequence) or not value:
                raise ValueError(
                    f"{op}: {name} must be a non-empty sequence of ints, got {value!r}"
                )
        if len(depths) != len(dims):
            raise ValueError(
                f"{op}: depths and dims must have the same length, got {depths!r} and {dims!r}"
            )
        depths = tuple(check_model_int(d, "depths", op) for d in depths)
        dims = tuple(check_model_int(d, "dims", op) for d in dims)
        stochastic_depth_prob = check_probability(
            stochastic_depth_prob, "stochastic_depth_prob", op
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        init = dict(kernel_init=_trunc_normal, bias_init=nnx.initializers.zeros)
        layers = [
            nnx.Sequential(
                nn.Conv(in_channels, dims[0], 4, stride=4, **init, **kw), _layer_norm(dims[0], **kw)
            )
        ]
        total, block_id = sum(depths), 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            blocks = []
            for _ in range(depth):
                # torchvision: rate = prob * block_id / (total - 1), 0 to prob inclusive.
                rate = stochastic_depth_prob * block_id / max(total - 1, 1)
                blocks.append(
                    CNBlock(dim, layer_scale=layer_scale, stochastic_depth_prob=rate, **kw)
                )
                block_id += 1
            layers.append(nnx.Sequential(*blocks))
            if i + 1 < len(dims):
                layers.append(
                    nnx.Sequential(
                        _layer_norm(dim, **kw), nn.Conv(dim, dims[i + 1], 2, stride=2, **init, **kw)
                    )
                )
        self.features = nnx.Sequential(*layers)
        self.min_size = 4 * 2 ** (len(dims) - 1)
        self.avgpool = nn.GlobalAvgPool()
        self.classifier = nnx.Sequential(
            _layer_norm(dims[-1], **kw),
            _identity,
            nnx.Linear(dims[-1], num_classes, **init, **kw),
        )

    def main_path(self) -> list:
        """Stem conv, every block's depthwise conv, the downsampling convs, in order."""
        return [self.features]

    def __call__(self, x):
        check_image(x, self.min_size, "ConvNeXt")
        return self.classifier(self.avgpool(self.features(x)))


ConvNeXtTiny = variant(
    ConvNeXt,
    "ConvNeXtTiny",
    """ConvNeXt-T: :class:`ConvNeXt` with depths ``(3, 3, 9, 3)`` and dims ``(96, 192,
    384, 768)`` (28,589,128 params), torchvision's ``convnext_tiny``.""",
    depths=(3, 3, 9, 3),
    dims=(96, 192, 384, 768),
)
