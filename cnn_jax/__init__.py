"""cnn_jax: convolutional networks in JAX.

``import cnn_jax as cj``; every op of :mod:`cnn_jax.ops` is re-exported here
(``cj.conv is cj.ops.conv``). Layers live in :mod:`cnn_jax.nn`, models in
:mod:`cnn_jax.models`, training in :mod:`cnn_jax.train`.
"""

from cnn_jax import models as models
from cnn_jax import nn as nn
from cnn_jax import ops as ops
from cnn_jax.ops import ReceptiveField as ReceptiveField
from cnn_jax.ops import adaptive_avg_pool as adaptive_avg_pool
from cnn_jax.ops import adaptive_max_pool as adaptive_max_pool
from cnn_jax.ops import avg_pool as avg_pool
from cnn_jax.ops import conv as conv
from cnn_jax.ops import conv_input_grad as conv_input_grad
from cnn_jax.ops import conv_kernel_grad as conv_kernel_grad
from cnn_jax.ops import conv_output_shape as conv_output_shape
from cnn_jax.ops import conv_transpose as conv_transpose
from cnn_jax.ops import conv_transpose_output_shape as conv_transpose_output_shape
from cnn_jax.ops import depthwise_conv as depthwise_conv
from cnn_jax.ops import fold as fold
from cnn_jax.ops import global_avg_pool as global_avg_pool
from cnn_jax.ops import global_max_pool as global_max_pool
from cnn_jax.ops import lp_pool as lp_pool
from cnn_jax.ops import max_pool as max_pool
from cnn_jax.ops import min_pool as min_pool
from cnn_jax.ops import pad as pad
from cnn_jax.ops import pixel_shuffle as pixel_shuffle
from cnn_jax.ops import pixel_unshuffle as pixel_unshuffle
from cnn_jax.ops import receptive_field as receptive_field
from cnn_jax.ops import separable_conv as separable_conv
from cnn_jax.ops import sum_pool as sum_pool
from cnn_jax.ops import unfold as unfold
from cnn_jax.ops import upsample as upsample
from cnn_jax.models._summary import summary as summary

__version__ = "0.1.0"
__all__ = [
    "models", "nn", "ops", "summary",
    "ReceptiveField",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "avg_pool",
    "conv",
    "conv_input_grad",
    "conv_kernel_grad",
    "conv_output_shape",
    "conv_transpose",
    "conv_transpose_output_shape",
    "depthwise_conv",
    "fold",
    "global_avg_pool",
    "global_max_pool",
    "lp_pool",
    "max_pool",
    "min_pool",
    "pad",
    "pixel_shuffle",
    "pixel_unshuffle",
    "receptive_field",
    "separable_conv",
    "sum_pool",
    "unfold",
    "upsample",
]
