"""flax.nnx layers over :mod:`cnn_jax.ops`: one layer per op, plus residual blocks.

Layers hold parameters (``nnx.Param`` ``kernel``/``bias`` in the op's layout) and
static config as plain Python values; ``layer(x)`` equals the op called with them.
Initialisation defaults to PyTorch's. Every public name is listed here.
"""

from cnn_jax.nn._blocks import BasicBlock as BasicBlock
from cnn_jax.nn._blocks import Bottleneck as Bottleneck
from cnn_jax.nn._blocks import InvertedResidual as InvertedResidual
from cnn_jax.nn._blocks import Residual as Residual
from cnn_jax.nn._blocks import SqueezeExcitation as SqueezeExcitation
from cnn_jax.nn._blocks import batch_norm as batch_norm
from cnn_jax.nn._blocks import conv_bn_act as conv_bn_act
from cnn_jax.nn._blocks import kaiming_normal_fan_out as kaiming_normal_fan_out
from cnn_jax.nn._conv import Conv as Conv
from cnn_jax.nn._conv import ConvTranspose as ConvTranspose
from cnn_jax.nn._conv import DepthwiseConv as DepthwiseConv
from cnn_jax.nn._conv import SeparableConv as SeparableConv
from cnn_jax.nn._graph import call_paths as call_paths
from cnn_jax.nn._graph import intercept_calls as intercept_calls
from cnn_jax.nn._graph import main_path as main_path
from cnn_jax.nn._graph import named_modules as named_modules
from cnn_jax.nn._pool import AdaptiveAvgPool as AdaptiveAvgPool
from cnn_jax.nn._pool import AdaptiveMaxPool as AdaptiveMaxPool
from cnn_jax.nn._pool import AvgPool as AvgPool
from cnn_jax.nn._pool import GlobalAvgPool as GlobalAvgPool
from cnn_jax.nn._pool import GlobalMaxPool as GlobalMaxPool
from cnn_jax.nn._pool import LpPool as LpPool
from cnn_jax.nn._pool import MaxPool as MaxPool
from cnn_jax.nn._pool import MinPool as MinPool
from cnn_jax.nn._resample import PixelShuffle as PixelShuffle
from cnn_jax.nn._resample import PixelUnshuffle as PixelUnshuffle
from cnn_jax.nn._resample import Upsample as Upsample
from cnn_jax.nn._stochastic import StochasticDepth as StochasticDepth

__all__ = [
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "AvgPool",
    "Conv",
    "ConvTranspose",
    "DepthwiseConv",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "LpPool",
    "MaxPool",
    "MinPool",
    "PixelShuffle",
    "PixelUnshuffle",
    "SeparableConv",
    "StochasticDepth",
    "Upsample",
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "Residual",
    "SqueezeExcitation",
    "batch_norm",
    "call_paths",
    "conv_bn_act",
    "intercept_calls",
    "kaiming_normal_fan_out",
    "main_path",
    "named_modules",
]
