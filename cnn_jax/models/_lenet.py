"""LeNet-5 (LeCun et al. 1998), the classic layout with modern defaults (ReLU, max pool)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn, ops
from cnn_jax._checks import check_choice, ntuple
from cnn_jax.models._common import check_model_ints, public_signature, torch_linear

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


@public_signature
class LeNet5(nnx.Module):
    """LeNet-5: conv5(6) -> pool2 -> conv5(16) -> pool2 -> fc 120 -> fc 84 -> fc classes.

    With ``in_channels=1``, 32x32 inputs and 10 classes it has the classic 61,706
    parameters (156 + 2,416 + 48,120 + 10,164 + 850). The feature map is flattened in
    PyTorch's ``(C, H, W)`` order, so a PyTorch LeNet's ``fc1`` weight loads as is.

    Args:
      num_classes: outputs of ``fc3``.
      in_channels: input channels (1 for the classic grey-scale digits).
      input_size: spatial input size ``H`` or ``(H, W)``; sets ``fc1``'s inputs
        (``16 * 5 * 5`` for 32x32). Must leave at least one pixel after the second pool.
      activation: ``"relu"`` (default) or ``"tanh"`` (the paper's squashing function).
      pooling: ``"max"`` (default) or ``"avg"`` (the paper's subsampling).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Input ``(N, H, W, in_channels)``; output ``(N, num_classes)`` logits.

    >>> model = LeNet5(10, in_channels=1, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((2, 32, 32, 1))).shape
    (2, 10)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        input_size=32,
        activation: str = "relu",
        pooling: str = "max",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "LeNet5"
        num_classes, in_channels = check_model_ints(
            op, num_classes=num_classes, in_channels=in_channels
        )
        self.input_size = ntuple(input_size, 2, "input_size", op)
        self.activation = check_choice(activation, tuple(ACTIVATIONS), "activation", op)
        self.pooling = check_choice(pooling, ("max", "avg"), "pooling", op)
        size = self.input_size
        for _ in range(2):
            size = tuple(s - 4 for s in size)
            if min(size) < 2:
                raise ValueError(
                    f"{op}: input_size must be at least 16x16 (two 5x5 convs and two 2x2 "
                    f"pools), got {input_size!r}"
                )
            size = ops.conv_output_shape(size, 2, stride=2)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        pool = nn.MaxPool if self.pooling == "max" else nn.AvgPool
        self.conv1 = nn.Conv(in_channels, 6, 5, **kw)
        self.pool1 = pool(2)
        self.conv2 = nn.Conv(6, 16, 5, **kw)
        self.pool2 = pool(2)
        self.fc1 = torch_linear(16 * size[0] * size[1], 120, **kw)
        self.fc2 = torch_linear(120, 84, **kw)
        self.fc3 = torch_linear(84, num_classes, **kw)

    def main_path(self) -> list:
        """The conv and pool layers in order (read by :func:`cnn_jax.receptive_field`)."""
        return [self.conv1, self.pool1, self.conv2, self.pool2]

    def __call__(self, x):
        if x.ndim != 4 or tuple(x.shape[1:3]) != self.input_size:
            raise ValueError(
                f"LeNet5: x must be (N, H, W, C) with (H, W) = input_size="
                f"{self.input_size}, got x.shape={tuple(x.shape)}"
            )
        act = ACTIVATIONS[self.activation]
        x = self.pool1(act(self.conv1(x)))
        x = self.pool2(act(self.conv2(x)))
        # PyTorch's flatten order (C, H, W), so PyTorch LeNet weights load unchanged.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = act(self.fc1(x))
        x = act(self.fc2(x))
        return self.fc3(x)
