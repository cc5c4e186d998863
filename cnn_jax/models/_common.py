"""Helpers shared by the model files: checks, variants, PyTorch-default Linear and inits."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax._checks import check_int


def check_model_int(value, name: str, op: str) -> int:
    """A positive int constructor argument (``num_classes``, ``in_channels``, widths)."""
    return check_int(value, name, op, min_value=1)


def check_model_ints(op: str, **values) -> tuple[int, ...]:
    """:func:`check_model_int` of each keyword argument, returned in the order given."""
    return tuple(check_model_int(value, name, op) for name, value in values.items())


def check_image(x, min_size: int, op: str) -> None:
    """``x`` must be ``(N, H, W, C)`` with ``H, W >= min_size`` (what the model's
    strides and pools need)."""
    if x.ndim != 4 or min(x.shape[1:3]) < min_size:
        raise ValueError(
            f"{op}: x must be (N, H, W, C) with H, W >= {min_size}, got x.shape={tuple(x.shape)}"
        )


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
    cls.__signature__ = sig.replace(
        parameters=list(sig.parameters.values())[1:], return_annotation=inspect.Signature.empty
    )
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
            raise TypeError(
                f"{name}: {clash[0]} is fixed by this variant ({fixed[clash[0]]!r});"
                f" use {cls.__name__} to choose it"
            )
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


def uniform_init(bound: float):
    """``init(key, shape, dtype)`` drawing from ``U(-bound, bound)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def normal_init(std: float):
    """``init(key, shape, dtype)`` drawing from ``N(0, std**2)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) * std

    return init


def torch_linear(
    in_features: int,
    out_features: int,
    *,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
    kernel_init=None,
    bias_init=None,
) -> nnx.Linear:
    """``nnx.Linear`` with ``torch.nn.Linear``'s default init (``U(+-1/sqrt(in))`` both)."""
    bound = 1.0 / math.sqrt(in_features)
    return nnx.Linear(
        in_features,
        out_features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init or uniform_init(bound),
        bias_init=bias_init or uniform_init(bound),
        rngs=rngs,
    )
