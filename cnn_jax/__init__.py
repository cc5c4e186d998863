"""cnn_jax: convolutional networks in JAX.

``import cnn_jax as cj``; every op of :mod:`cnn_jax.ops` is re-exported here
(``cj.conv is cj.ops.conv``). Layers live in :mod:`cnn_jax.nn`, models in
:mod:`cnn_jax.models`, training in :mod:`cnn_jax.train`.
"""

from cnn_jax import models as models
from cnn_jax import nn as nn
from cnn_jax import ops as ops
from cnn_jax.ops import *  # noqa: F401,F403  (the explicit list is ops.__all__)
from cnn_jax.ops import __all__ as _ops_all
from cnn_jax.models._summary import summary as summary

__version__ = "0.1.0"
__all__ = ["models", "nn", "ops", "summary", *_ops_all]
