"""Building blocks of residual and mobile networks: ``nnx.Module`` compositions of layers.

Blocks work on channels_last inputs ``(N, *spatial, C)`` (2-D unless a block says
otherwise) and keep PyTorch/torchvision's attribute names (``conv1``, ``bn1``,
``downsample[0]``, ``fc1``, ``conv[i]``), so ``cnn_jax.models.load_torch_state_dict``
maps PyTorch weights onto them by name.

BatchNorm is ``flax.nnx.BatchNorm`` with PyTorch's settings (``momentum=0.9`` in
Flax's convention is PyTorch's ``momentum=0.1``; ``epsilon=1e-5``); ``.train()`` /
``.eval()`` on any enclosing module switch it between batch and running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import ops
from cnn_jax._checks import check_bool, check_int
from cnn_jax.nn._conv import Conv

BN_MOMENTUM = 0.9  # Flax's running-average decay; PyTorch's momentum=0.1.
BN_EPSILON = 1e-5


# ---------------------------------------------------------------------------
# Initialisers used by the torchvision-style models.


def kaiming_normal_fan_out(key, shape, dtype=jnp.float32):
    """``torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")``.

    ``N(0, 2 / fan_out)`` with ``fan_out = C_out * prod(k)`` for a channels_last
    kernel ``(*k, C_in // groups, C_out)`` (torchvision's conv initialisation).
    """
    fan_out = shape[-1] * math.prod(shape[:-2])
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)


def batch_norm(
    features: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs, zero_scale: bool = False
) -> nnx.BatchNorm:
    """``nnx.BatchNorm`` over the last (channel) axis with PyTorch's settings
    (``BN_MOMENTUM``, ``BN_EPSILON``); ``zero_scale`` starts its scale at zero."""
    return nnx.BatchNorm(
        features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
        rngs=rngs,
    )


def conv_bn_act(
    in_features: int,
    out_features: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    activation: Callable | None = jax.nn.relu,
    kernel_init=kaiming_normal_fan_out,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Sequential:
    """torchvision's ``Conv2dNormActivation``: bias-free conv, BatchNorm, activation.

    Padding is ``dilation * (kernel_size - 1) // 2`` ("same" size for stride 1).
    Returned as ``nnx.Sequential(conv, bn[, activation])`` so PyTorch names ``i.0``
    (conv) and ``i.1`` (BatchNorm) line up.

    >>> block = conv_bn_act(3, 8, 3, stride=2, rngs=nnx.Rngs(0))
    >>> block(jnp.ones((1, 8, 8, 3))).shape
    (1, 4, 4, 8)
    """
    layers = [
        Conv(
            in_features,
            out_features,
            kernel_size,
            stride=stride,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=groups,
            use_bias=False,
            kernel_init=kernel_init,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        ),
        batch_norm(out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs),
    ]
    if activation is not None:
        layers.append(activation)
    return nnx.Sequential(*layers)


# ---------------------------------------------------------------------------
# Blocks.


class Residual(nnx.Module):
    """A skip connection around a module: ``module(x) + (projection(x) or x)``.

    No activation is applied after the addition: the module's last layer should not
    end in one either (the identity path then stays linear, as in ResNets).

    Args:
      module: any callable ``nnx.Module`` mapping ``x`` to an array of ``x``'s shape
        (or of the projection's output shape).
      projection: optional module applied to ``x`` on the skip path when the shapes
        differ (e.g. a strided 1x1 conv); None keeps the identity.

    >>> block = Residual(Conv(4, 4, 3, padding=1, rngs=nnx.Rngs(0)))
    >>> block(jnp.ones((1, 8, 8, 4))).shape
    (1, 8, 8, 4)
    """

    def __init__(self, module: nnx.Module, projection: nnx.Module | None = None):
        if not callable(module):
            raise TypeError(f"Residual: module must be a callable nnx.Module, got {module!r}")
        if projection is not None and not callable(projection):
            raise TypeError(
                f"Residual: projection must be a callable nnx.Module or None, got {projection!r}"
            )
        self.module = module
        self.projection = projection

    def __call__(self, x):
        out = self.module(x)
        skip = x if self.projection is None else self.projection(x)
        if out.shape != skip.shape:
            raise ValueError(
                f"Residual: module output shape must equal the skip path's shape (pass a "
                f"projection), got {out.shape} and {skip.shape}"
            )
        return out + skip


def _shortcut(in_channels, out_channels, stride, *, dtype, param_dtype, rngs):
    """torchvision's shortcut projection, ``Sequential(conv1x1(stride), BatchNorm)``,
    where the stride or the channel count changes; else None (the identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nnx.Sequential(
        Conv(
            in_channels,
            out_channels,
            1,
            stride=stride,
            use_bias=False,
            kernel_init=kaiming_normal_fan_out,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        ),
        batch_norm(out_channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs),
    )


def _check_block_args(in_features, features, stride, zero_init_residual, op):
    in_features = check_int(in_features, "in_features", op)
    features = check_int(features, "features", op)
    stride = check_int(stride, "stride", op)
    zero_init_residual = check_bool(zero_init_residual, "zero_init_residual", op)
    return in_features, features, stride, zero_init_residual


class _ResNetBlock(nnx.Module):
    """``relu(branch(x) + shortcut(x))``: what BasicBlock and Bottleneck share. A block
    defines ``_branch`` and sets ``downsample`` (a projection, or None)."""

    def __call__(self, x):
        out = self._branch(x)
        # The shortcut after the branch, as torchvision (and so summary rows) order them.
        identity = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(out + identity)


class BasicBlock(_ResNetBlock):
    """ResNet's basic block (torchvision ``BasicBlock``): two 3x3 convs and a skip.

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``. The first conv carries
    the stride. A ``downsample`` projection (1x1 conv with the stride, BatchNorm) is
    built when the stride is not 1 or the channel count changes.

    Args:
      in_features: input channels.
      features: output channels (``expansion = 1``).
      stride: stride of ``conv1`` and of the projection.
      zero_init_residual: initialise ``bn2``'s scale to zero, so the block starts
        as the identity (torchvision's ``zero_init_residual``).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Input ``(N, H, W, in_features)``; output ``(N, ceil(H / stride), ceil(W / stride),
    features)``.

    >>> block = BasicBlock(8, 16, stride=2, rngs=nnx.Rngs(0))
    >>> block(jnp.ones((1, 8, 8, 8))).shape
    (1, 4, 4, 16)
    """

    expansion = 1

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        stride: int = 1,
        zero_init_residual: bool = False,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        in_features, features, stride, zero_init_residual = _check_block_args(
            in_features, features, stride, zero_init_residual, "BasicBlock"
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = Conv(
            in_features,
            features,
            3,
            stride=stride,
            padding=1,
            use_bias=False,
            kernel_init=kaiming_normal_fan_out,
            **kw,
        )
        self.bn1 = batch_norm(features, **kw)
        self.conv2 = Conv(
            features,
            features,
            3,
            padding=1,
            use_bias=False,
            kernel_init=kaiming_normal_fan_out,
            **kw,
        )
        self.bn2 = batch_norm(features, zero_scale=zero_init_residual, **kw)
        self.downsample = _shortcut(in_features, features, stride, **kw)

    def main_path(self) -> list:
        """The spatial layers on the residual branch, in order (for receptive fields)."""
        return [self.conv1, self.conv2]

    def _branch(self, x):
        return self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_ResNetBlock):
    """ResNet's bottleneck block, torchvision's "v1.5" (stride on the 3x3 conv).

    ``conv1`` 1x1 to ``width``, ``conv2`` 3x3 (stride, groups) , ``conv3`` 1x1 to
    ``features * 4``, each followed by BatchNorm, ReLU after the first two and after
    the addition of the skip path. ``width = int(features * base_width / 64) * groups``.

    Args:
      in_features: input channels.
      features: the block's inner width at ``base_width=64``; output channels are
        ``features * expansion`` (``expansion = 4``).
      stride: stride of ``conv2`` and of the projection.
      groups, base_width: ResNeXt / Wide-ResNet options (defaults give ResNet-50).
      zero_init_residual: initialise ``bn3``'s scale to zero.
      dtype, param_dtype, rngs: as :class:`BasicBlock`.

    >>> block = Bottleneck(16, 4, stride=2, rngs=nnx.Rngs(0))
    >>> block(jnp.ones((1, 8, 8, 16))).shape
    (1, 4, 4, 16)
    """

    expansion = 4

    def __init__(
        self,
        in_features: int,
        features: int,
        *,
        stride: int = 1,
        groups: int = 1,
        base_width: int = 64,
        zero_init_residual: bool = False,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "Bottleneck"
        in_features, features, stride, zero_init_residual = _check_block_args(
            in_features, features, stride, zero_init_residual, op
        )
        groups = check_int(groups, "groups", op)
        base_width = check_int(base_width, "base_width", op)
        width = int(features * (base_width / 64.0)) * groups
        out_features = features * self.expansion
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        init = kaiming_normal_fan_out
        self.conv1 = Conv(in_features, width, 1, use_bias=False, kernel_init=init, **kw)
        self.bn1 = batch_norm(width, **kw)
        self.conv2 = Conv(
            width,
            width,
            3,
            stride=stride,
            padding=1,
            groups=groups,
            use_bias=False,
            kernel_init=init,
            **kw,
        )
        self.bn2 = batch_norm(width, **kw)
        self.conv3 = Conv(width, out_features, 1, use_bias=False, kernel_init=init, **kw)
        self.bn3 = batch_norm(out_features, zero_scale=zero_init_residual, **kw)
        self.downsample = _shortcut(in_features, out_features, stride, **kw)

    def main_path(self) -> list:
        """The spatial layers on the residual branch, in order (for receptive fields)."""
        return [self.conv1, self.conv2, self.conv3]

    def _branch(self, x):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class SqueezeExcitation(nnx.Module):
    """Squeeze-and-excitation (Hu et al. 2018), as torchvision's ``SqueezeExcitation``.

    ``x * scale_activation(fc2(activation(fc1(mean_spatial(x)))))`` where ``fc1`` and
    ``fc2`` are 1x1 convolutions with bias (``in -> squeeze -> in``).

    Args:
      in_features: channels ``C`` of ``x``.
      squeeze_features: channels of the bottleneck.
      activation: after ``fc1`` (default ReLU).
      scale_activation: gate (default sigmoid; MobileNetV3 uses hard-sigmoid).
      dtype, param_dtype, rngs: as :class:`BasicBlock`.

    Input and output ``(N, *spatial, C)`` (any number of spatial dims).

    >>> se = SqueezeExcitation(8, 2, rngs=nnx.Rngs(0))
    >>> se(jnp.ones((1, 4, 4, 8))).shape
    (1, 4, 4, 8)
    """

    def __init__(
        self,
        in_features: int,
        squeeze_features: int,
        *,
        activation: Callable = jax.nn.relu,
        scale_activation: Callable = jax.nn.sigmoid,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "SqueezeExcitation"
        in_features = check_int(in_features, "in_features", op)
        squeeze_features = check_int(squeeze_features, "squeeze_features", op)
        for name, fn in (("activation", activation), ("scale_activation", scale_activation)):
            if not callable(fn):
                raise TypeError(f"{op}: {name} must be callable, got {fn!r}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Conv(in_features, squeeze_features, 1, **kw)
        self.fc2 = Conv(squeeze_features, in_features, 1, **kw)
        self.activation = activation
        self.scale_activation = scale_activation

    def main_path(self) -> list:
        """Nothing: a gate computed from the pooled map, which adds nothing to the
        ``(kernel, stride)`` recursion of the path it scales."""
        return []

    def __call__(self, x):
        n = x.ndim - 2
        if n != 2:
            raise ValueError(
                f"SqueezeExcitation: x must be (N, H, W, C), got x.shape={tuple(x.shape)}"
            )
        scale = ops.global_avg_pool(x, keepdims=True)
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(scale))))
        return x * scale


class InvertedResidual(nnx.Module):
    """MobileNetV2's inverted residual (torchvision ``InvertedResidual``).

    ``conv = Sequential(expand 1x1 + BN + ReLU6 (when expand_ratio != 1), depthwise
    3x3 (stride) + BN + ReLU6, [SqueezeExcitation], project 1x1 + BN)``: the
    projection is linear (no activation). The input is added back when
    ``stride == 1`` and ``in_features == out_features``.

    Args:
      in_features: input channels.
      out_features: output channels.
      stride: 1 or 2, of the depthwise conv.
      expand_ratio: hidden width ``round(in_features * expand_ratio)``.
      se_ratio: when given, a :class:`SqueezeExcitation` with
        ``max(1, int(hidden * se_ratio))`` squeeze channels follows the depthwise
        conv (MobileNetV3 / EfficientNet style); None (MobileNetV2) has none.
      activation: of the expand and depthwise convs (default ReLU6).
      dtype, param_dtype, rngs: as :class:`BasicBlock`.

    >>> block = InvertedResidual(8, 8, stride=1, expand_ratio=6, rngs=nnx.Rngs(0))
    >>> block(jnp.ones((1, 8, 8, 8))).shape
    (1, 8, 8, 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        stride: int = 1,
        expand_ratio: float = 6,
        se_ratio: float | None = None,
        activation: Callable = jax.nn.relu6,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "InvertedResidual"
        in_features = check_int(in_features, "in_features", op)
        out_features = check_int(out_features, "out_features", op)
        if stride not in (1, 2) or isinstance(stride, bool):
            raise ValueError(f"{op}: stride must be 1 or 2, got {stride!r}")
        if (
            isinstance(expand_ratio, bool)
            or not isinstance(expand_ratio, (int, float))
            or expand_ratio < 1
        ):
            raise ValueError(f"{op}: expand_ratio must be a number >= 1, got {expand_ratio!r}")
        if se_ratio is not None and not 0 < se_ratio <= 1:
            raise ValueError(f"{op}: se_ratio must be in (0, 1] or None, got {se_ratio!r}")
        hidden = int(round(in_features * expand_ratio))
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layers = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(in_features, hidden, 1, activation=activation, **kw))
        depthwise = conv_bn_act(
            hidden, hidden, 3, stride=stride, groups=hidden, activation=activation, **kw
        )
        layers.append(depthwise)
        if se_ratio is not None:
            layers.append(SqueezeExcitation(hidden, max(1, int(hidden * se_ratio)), **kw))
        layers.append(
            Conv(hidden, out_features, 1, use_bias=False, kernel_init=kaiming_normal_fan_out, **kw)
        )
        layers.append(batch_norm(out_features, **kw))
        self.conv = nnx.Sequential(*layers)
        self.stride = stride
        self.use_res_connect = stride == 1 and in_features == out_features

    def main_path(self) -> list:
        """The block's layers in order (read by :func:`cnn_jax.nn.main_path`)."""
        return list(self.conv.layers)

    def __call__(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out
