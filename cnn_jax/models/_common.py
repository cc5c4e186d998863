"""Helpers shared by the model files: checks, PyTorch-default Linear, receptive fields."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.ops._args import check_int


def check_model_int(value, name: str, op: str) -> int:
    """A positive int constructor argument (``num_classes``, ``in_channels``, widths)."""
    return check_int(value, name, op, min_value=1)


def check_probability(value, name: str, op: str) -> float:
    """A rate in ``[0, 1)`` (dropout, stochastic depth) as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{op}: {name} must be in [0, 1), got {value!r}")
    return float(value)


def public_signature(cls):
    """Class decorator: ``inspect.signature(cls)`` and ``help(cls)`` show ``__init__``'s
    arguments (nnx's metaclass defines ``__call__``, which otherwise hides them behind
    ``(*args, **kwargs)``)."""
    sig = inspect.signature(cls.__init__)
    cls.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:],
                                    return_annotation=inspect.Signature.empty)
    return cls


def variant(cls, name: str, doc: str, **fixed):
    """A named factory for ``cls`` with some constructor arguments fixed.

    Like ``functools.partial(cls, **fixed)``, but with its own ``__name__`` and
    docstring, and a signature without the fixed arguments (so ``help(ResNet18)`` lists
    what may still be passed; passing a fixed one is a ``TypeError``).
    """
    sig = inspect.signature(cls)
    params = [p for n, p in sig.parameters.items() if n not in fixed]

    def factory(num_classes, **kwargs):
        clash = sorted(set(kwargs) & set(fixed))
        if clash:
            raise TypeError(f"{name}: {clash[0]} is fixed by this variant ({fixed[clash[0]]!r});"
                            f" use {cls.__name__} to choose it")
        return cls(num_classes, **fixed, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = cls.__module__
    factory.__doc__ = doc
    factory.__signature__ = sig.replace(parameters=params, return_annotation=cls.__name__)
    return factory


def torch_flatten(x):
    """Flatten ``(N, H, W, C)`` in PyTorch's ``(C, H, W)`` order, so a PyTorch
    classifier's first ``Linear`` weight loads unchanged."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def torch_linear(in_features: int, out_features: int, *, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, kernel_init=None, bias_init=None) -> nnx.Linear:
    """``nnx.Linear`` with ``torch.nn.Linear``'s default init (``U(+-1/sqrt(in))`` both)."""
    bound = 1.0 / math.sqrt(in_features)
    return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=param_dtype,
                      kernel_init=kernel_init or _uniform(bound),
                      bias_init=bias_init or _uniform(bound), rngs=rngs)


def layer_spec(layer) -> tuple:
    """A layer's ``(kernel_size, stride, dilation, padding_low)`` entry."""
    spec = getattr(layer, "receptive_field_spec", None)
    if spec is None:
        raise ValueError(
            f"receptive_field: layer {type(layer).__name__} has no receptive_field_spec"
        )
    return spec


def receptive_field_layers(layers) -> list:
    """The specs of a main path's layers, for :func:`cnn_jax.receptive_field`."""
    return [layer_spec(layer) for layer in layers]


def named_modules(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """Every sub-module with its PyTorch-style dotted name (``layer1.0.conv1``).

    ``nnx.Sequential`` keeps its items under ``layers``; PyTorch's ``nn.Sequential``
    names them directly (``downsample.0``), so that path step is dropped. The root
    module has the name ``""``.
    """
    nodes = dict(nnx.iter_graph(model))
    out = []
    for path, node in nodes.items():
        if not isinstance(node, nnx.Module):
            continue
        parts = []
        for i, key in enumerate(path):
            if key == "layers" and isinstance(nodes.get(path[:i]), nnx.Sequential):
                continue
            parts.append(str(key))
        out.append((".".join(parts), node))
    return out
