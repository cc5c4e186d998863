"""What every export shares: the inference function of a model and its input spec.

A model is exported as a pure function of the input alone: its weights are split off
once (``nnx.split``) and closed over as constants, so the exported program needs no
cnn_jax class to run. The function is traced in eval mode (BatchNorm's running
statistics, no dropout) on a copy, so the caller's model keeps its mode. While it is
traced, every layer's call runs under a ``jax.named_scope`` of its PyTorch-style path
(``layer1.0.conv1``): the exported program's locations, and the ONNX converter's error
messages, name the layer an op belongs to. The scopes are opened by wrappers put in
place of the layers of that traced copy (``cnn_jax.nn.intercept_calls``); no class
is patched.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.nn import intercept_calls, named_modules

BATCH = "N"  # the name of the symbolic batch dimension


def check_input_shape(input_shape, op: str) -> tuple[int, int, int]:
    """``(H, W, C)`` as three positive Python ints."""
    try:
        shape = tuple(operator.index(v) for v in input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"{op}: input_shape must be (H, W, C), three positive ints, got {input_shape!r}"
        )
    return shape


def check_batch(batch, op: str) -> int | None:
    """None (a symbolic batch dimension) or a positive int."""
    if batch is None:
        return None
    try:
        value = operator.index(batch)
    except TypeError:
        value = 0
    if isinstance(batch, bool) or value < 1:
        raise ValueError(
            f"{op}: batch must be None (any batch size) or a positive int, got {batch!r}"
        )
    return value


def input_spec(input_shape, batch, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    """The ``(N, H, W, C)`` input, ``N`` symbolic when ``batch`` is None."""
    n = jax.export.symbolic_shape(BATCH)[0] if batch is None else batch
    return jax.ShapeDtypeStruct((n, *input_shape), dtype)


def inference_function(model: nnx.Module, op: str):
    """``f(x) = model(x)`` in eval mode, with the weights as closed-over constants."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{op}: model must be an nnx.Module, got {type(model).__name__}")
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    copy.eval()  # the copy only: the caller's model keeps its mode
    graphdef, state = nnx.split(copy)

    def forward(x):
        module = nnx.merge(graphdef, state)  # a fresh copy per trace, safe to rewire
        intercept_calls(module, _scoped)
        return _scoped(type(module).__name__, module)(x)

    return forward


def _scoped(path: str, layer):
    """``layer``'s call under a ``jax.named_scope`` of its path."""

    def scoped_call(*args, **kwargs):
        with jax.named_scope(path):
            return layer(*args, **kwargs)

    return scoped_call


def layer_of(name_stack: str, layers: set[str]) -> str | None:
    """The innermost layer path in a ``name_stack`` such as ``layer1/layer1.0/...``."""
    for part in reversed(str(name_stack).split("/")):
        if part in layers:
            return part
    return None


def layer_paths(model: nnx.Module) -> set[str]:
    """Every layer path :func:`inference_function` may open a scope for, in ``model``."""
    return {p or type(m).__name__ for p, m in named_modules(model)}
