"""ResNets (He et al. 2016) as torchvision builds them, with torchvision's layer names.

One generic :class:`ResNet` and the variants as small factories (``ResNet18``,
``ResNet34``, ``ResNet50``, ``ResNeXt50_32x4d``, ``WideResNet50_2``), as in Flax's
ImageNet example. Parameter counts with 1000 classes and 3 input channels equal
torchvision's: ResNet-18 11,689,512; ResNet-34 21,797,672; ResNet-50 25,557,032;
ResNeXt-50 32x4d 25,028,904; Wide ResNet-50-2 68,883,240.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn
from cnn_jax.models._common import (
    check_model_int,
    check_model_ints,
    public_signature,
    torch_linear,
    variant,
)
from cnn_jax.nn import BasicBlock, Bottleneck


@public_signature
class ResNet(nnx.Module):
    """A ResNet: stem, four stages of residual blocks, global average pool, ``fc``.

    Stem: 7x7/2 conv (padding 3), BatchNorm, ReLU, 3x3/2 max pool (padding 1); with
    ``small_input=True`` (CIFAR-style, for 32x32 and smaller images) a 3x3/1 conv
    (padding 1) and no max pool. Stage ``i`` has ``stage_sizes[i]`` blocks of width
    ``width * 2**i``; stages 2-4 halve the resolution in their first block.

    Attribute names follow torchvision (``conv1``, ``bn1``, ``layer1[0].conv1``,
    ``layer2[0].downsample[0]``, ``fc``), so
    :func:`cnn_jax.models.load_torch_state_dict` reads torchvision checkpoints.

    Args:
      num_classes: outputs of ``fc``.
      block: :class:`cnn_jax.BasicBlock` or :class:`cnn_jax.Bottleneck`.
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      in_channels: input channels.
      small_input: CIFAR-style stem (3x3/1 conv, no max pool).
      width: channels of the stem and of the first stage (64 in the paper).
      groups: groups of the Bottleneck's 3x3 conv (ResNeXt's cardinality, 32).
      width_per_group: the Bottleneck's inner width is ``int(planes * width_per_group
        / 64) * groups`` (64: ResNet; 4 with 32 groups: ResNeXt-50 32x4d; 128: Wide
        ResNet-50-2, twice ResNet-50's inner width). BasicBlocks need the defaults.
      zero_init_residual: zero the last BatchNorm scale of every block.
      dtype, param_dtype: compute and parameter dtypes (bf16 compute, f32 params).
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Input ``(N, H, W, in_channels)``; output ``(N, num_classes)`` logits. The spatial
    size shrinks by 32 (by 8 with ``small_input``) before the global pool.

    >>> model = ResNet(10, block=BasicBlock, stage_sizes=(1, 1, 1, 1), width=8,
    ...                small_input=True, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 32, 32, 3))).shape
    (2, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        block: type = BasicBlock,
        stage_sizes: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 3,
        small_input: bool = False,
        width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "ResNet"
        num_classes, in_channels, width, groups, width_per_group = check_model_ints(
            op,
            num_classes=num_classes,
            in_channels=in_channels,
            width=width,
            groups=groups,
            width_per_group=width_per_group,
        )
        if block not in (BasicBlock, Bottleneck):
            raise ValueError(f"{op}: block must be BasicBlock or Bottleneck, got {block!r}")
        if block is BasicBlock and (groups, width_per_group) != (1, 64):
            raise ValueError(
                f"{op}: groups and width_per_group must be 1 and 64 with "
                f"BasicBlock, got {groups} and {width_per_group}"
            )
        block_kw = {} if block is BasicBlock else dict(groups=groups, base_width=width_per_group)
        if (
            isinstance(stage_sizes, str)
            or not isinstance(stage_sizes, Sequence)
            or len(stage_sizes) != 4
        ):
            raise ValueError(f"{op}: stage_sizes must be 4 ints, got {stage_sizes!r}")
        stage_sizes = tuple(check_model_int(s, "stage_sizes", op) for s in stage_sizes)
        if not isinstance(small_input, bool):
            raise TypeError(f"{op}: small_input must be a bool, got {small_input!r}")
        self.small_input = small_input
        self.stage_sizes = stage_sizes
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if small_input:
            self.conv1 = nn.Conv(
                in_channels,
                width,
                3,
                padding=1,
                use_bias=False,
                kernel_init=nn.kaiming_normal_fan_out,
                **kw,
            )
            self.maxpool = None
        else:
            self.conv1 = nn.Conv(
                in_channels,
                width,
                7,
                stride=2,
                padding=3,
                use_bias=False,
                kernel_init=nn.kaiming_normal_fan_out,
                **kw,
            )
            self.maxpool = nn.MaxPool(3, 2, padding=1)
        self.bn1 = nn.batch_norm(width, **kw)
        features = width
        for i, size in enumerate(stage_sizes):
            planes = width * 2**i
            blocks = []
            for j in range(size):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(
                    block(
                        features,
                        planes,
                        stride=stride,
                        zero_init_residual=zero_init_residual,
                        **block_kw,
                        **kw,
                    )
                )
                features = planes * block.expansion
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.avgpool = nn.GlobalAvgPool()
        self.fc = torch_linear(features, num_classes, **kw)
        self.num_features = features

    @property
    def stages(self) -> list:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def main_path(self) -> list:
        """Stem conv (and max pool), then every block's residual-branch convs, in order."""
        return [self.conv1, *([self.maxpool] if self.maxpool is not None else []), *self.stages]

    def __call__(self, x):
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for stage in self.stages:
            for blk in stage:
                x = blk(x)
        return self.fc(self.avgpool(x))


ResNet18 = variant(
    ResNet,
    "ResNet18",
    """ResNet-18: :class:`ResNet` with BasicBlocks ``(2, 2, 2, 2)`` (11,689,512 params).

    >>> ResNet18(10, small_input=True, rngs=nnx.Rngs(0))(jnp.ones((1, 32, 32, 3))).shape
    (1, 10)
    """,
    block=BasicBlock,
    stage_sizes=(2, 2, 2, 2),
)

ResNet34 = variant(
    ResNet,
    "ResNet34",
    """ResNet-34: :class:`ResNet` with BasicBlocks ``(3, 4, 6, 3)`` (21,797,672 params).""",
    block=BasicBlock,
    stage_sizes=(3, 4, 6, 3),
)

ResNet50 = variant(
    ResNet,
    "ResNet50",
    """ResNet-50: :class:`ResNet` with Bottlenecks ``(3, 4, 6, 3)`` (25,557,032 params).""",
    block=Bottleneck,
    stage_sizes=(3, 4, 6, 3),
)

ResNeXt50_32x4d = variant(
    ResNet,
    "ResNeXt50_32x4d",
    """ResNeXt-50 32x4d (Xie et al. 2017): ResNet-50 whose 3x3 convs have 32 groups of 4
    channels per ``planes=64`` (25,028,904 params), torchvision's ``resnext50_32x4d``.""",
    block=Bottleneck,
    stage_sizes=(3, 4, 6, 3),
    groups=32,
    width_per_group=4,
)

WideResNet50_2 = variant(
    ResNet,
    "WideResNet50_2",
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): ResNet-50 with twice the inner
    width of every Bottleneck (68,883,240 params), torchvision's ``wide_resnet50_2``.""",
    block=Bottleneck,
    stage_sizes=(3, 4, 6, 3),
    width_per_group=128,
)
