"""Pure functional CNN ops on ``lax.conv_general_dilated`` and ``lax.reduce_window``.

Every name here is public and re-exported by ``cnn_jax``; modules starting with an
underscore are private.
"""

from cnn_jax.ops._adaptive import adaptive_avg_pool as adaptive_avg_pool
from cnn_jax.ops._adaptive import adaptive_max_pool as adaptive_max_pool
from cnn_jax.ops._adaptive import global_avg_pool as global_avg_pool
from cnn_jax.ops._adaptive import global_max_pool as global_max_pool
from cnn_jax.ops._conv import conv as conv
from cnn_jax.ops._conv import conv_kernel_grad as conv_kernel_grad
from cnn_jax.ops._conv import depthwise_conv as depthwise_conv
from cnn_jax.ops._conv import separable_conv as separable_conv
from cnn_jax.ops._conv_transpose import conv_input_grad as conv_input_grad
from cnn_jax.ops._conv_transpose import conv_transpose as conv_transpose
from cnn_jax.ops._pad import pad as pad
from cnn_jax.ops._pool import avg_pool as avg_pool
from cnn_jax.ops._pool import lp_pool as lp_pool
from cnn_jax.ops._pool import max_pool as max_pool
from cnn_jax.ops._pool import min_pool as min_pool
from cnn_jax.ops._pool import sum_pool as sum_pool
from cnn_jax.ops._resample import fold as fold
from cnn_jax.ops._resample import pixel_shuffle as pixel_shuffle
from cnn_jax.ops._resample import pixel_unshuffle as pixel_unshuffle
from cnn_jax.ops._resample import unfold as unfold
from cnn_jax.ops._resample import upsample as upsample
from cnn_jax.ops._shape import ReceptiveField as ReceptiveField
from cnn_jax.ops._shape import conv_output_shape as conv_output_shape
from cnn_jax.ops._shape import conv_transpose_output_shape as conv_transpose_output_shape
from cnn_jax.ops._shape import receptive_field as receptive_field

__all__ = [
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
    "ReceptiveField",
    "separable_conv",
    "sum_pool",
    "unfold",
    "upsample",
]
