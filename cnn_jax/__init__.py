"""cnn_jax: convolutional networks in JAX.

``import cnn_jax as cj``; every op of :mod:`cnn_jax.ops` is re-exported here
(``cj.conv is cj.ops.conv``). Layers live in :mod:`cnn_jax.nn`, models in
:mod:`cnn_jax.models`, training in :mod:`cnn_jax.train`, what a trained CNN
looks at in :mod:`cnn_jax.interpret`, StableHLO / ONNX / PyTorch export in
:mod:`cnn_jax.export`.
"""

import importlib

# Everything is imported on first use (PEP 562): ``import cnn_jax`` is instant and
# the ``cnn-jax`` command prints its help without loading jax.
_SUBMODULES = ("export", "interpret", "models", "nn", "ops", "train")
_OPS = (
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
)
_WHERE = {**{name: "cnn_jax.ops" for name in _OPS}, "summary": "cnn_jax.models"}

__version__ = "0.1.0"
__all__ = sorted(("export", "interpret", "models", "nn", "ops", "summary", *_OPS))


def __getattr__(name):
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
