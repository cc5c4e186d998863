"""U-Net (Ronneberger et al. 2015) with "same" convolutions and transposed-conv upsampling."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn
from cnn_jax.models._common import check_model_int, check_model_ints, public_signature


def _double_conv(in_channels, out_channels, **kw) -> nnx.Sequential:
    """Two 3x3 conv-BN-ReLU layers (padding 1, so the size is kept)."""
    return nnx.Sequential(
        nn.conv_bn_act(in_channels, out_channels, 3, **kw),
        nn.conv_bn_act(out_channels, out_channels, 3, **kw),
    )


@public_signature
class UNet(nnx.Module):
    """A U-Net for per-pixel classification (segmentation).

    Encoder: ``depth`` levels of a double 3x3 conv-BN-ReLU then a 2x2 max pool, with
    channels ``base_width * 2**level``; a double conv at the bottom. Decoder: per level
    a 2x2/stride-2 :class:`cnn_jax.nn.ConvTranspose` halving the channels, concatenation
    with the encoder's skip features, a double conv. A 1x1 conv ``head`` gives
    ``num_classes`` logits per pixel. Convs are padded ("same"), so the output has the
    input's size; ``H`` and ``W`` must be divisible by ``2**depth``.

    Args:
      num_classes: output channels (classes) per pixel.
      in_channels: input channels.
      base_width: channels of the first level (64 in the paper).
      depth: number of pooling steps (4 in the paper).
      dtype, param_dtype: compute and parameter dtypes.
      rngs: ``nnx.Rngs`` with a ``params`` stream.

    Input ``(N, H, W, in_channels)``; output ``(N, H, W, num_classes)``.

    >>> model = UNet(3, in_channels=1, base_width=8, depth=2, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((1, 16, 16, 1))).shape
    (1, 16, 16, 3)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        base_width: int = 16,
        depth: int = 3,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        op = "UNet"
        num_classes, in_channels, base_width = check_model_ints(
            op, num_classes=num_classes, in_channels=in_channels, base_width=base_width
        )
        self.depth = check_model_int(depth, "depth", op)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        widths = [base_width * 2**i for i in range(self.depth + 1)]
        down, features = [], in_channels
        for w in widths:
            down.append(_double_conv(features, w, **kw))
            features = w
        self.down = nnx.List(down)
        self.pool = nn.MaxPool(2)
        up, up_conv = [], []
        for w in reversed(widths[:-1]):
            up.append(nn.ConvTranspose(2 * w, w, 2, stride=2, **kw))
            up_conv.append(_double_conv(2 * w, w, **kw))
        self.up = nnx.List(up)
        self.up_conv = nnx.List(up_conv)
        self.head = nn.Conv(base_width, num_classes, 1, **kw)

    def main_path(self) -> list:
        """The contracting path's convs and pools down to the bottom double conv.

        Its receptive field is that of one bottom unit; the decoder's upsampling
        does not fit the ``(kernel, stride)`` recursion and is left out.
        """
        path = []
        for i, block in enumerate(self.down):
            path.append(block)
            if i < self.depth:
                path.append(self.pool)
        return path

    def __call__(self, x):
        factor = 2**self.depth
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"UNet: x must be (N, H, W, C) with H and W divisible by 2**depth="
                f"{factor}, got x.shape={tuple(x.shape)}"
            )
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = self.pool(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = conv(jnp.concatenate([skip, up(x)], axis=-1))
        return self.head(x)
