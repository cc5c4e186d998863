"""The effective receptive field (Luo et al. 2016): how much each input pixel moves the
centre unit of a feature map, beside the theoretical field of cnn_jax.receptive_field."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.interpret._capture import check_layers, run


def effective_receptive_field(
    model,
    input_shape: Sequence[int],
    *,
    layer: str | None = None,
    num_samples: int = 8,
    key=None,
    inputs=None,
):
    """``|d (centre unit) / d x|`` averaged over random inputs: Luo et al.'s ERF.

    The centre unit is position ``(h // 2, w // 2)`` of the output ``(N, h, w, K)`` of
    ``layer`` (or of the model, when ``layer`` is None), summed over its ``K``
    channels: Luo et al. set the output gradient to 1 there and 0 elsewhere and
    back-propagate it. The absolute input gradient is summed over input channels and
    averaged over ``num_samples`` standard-normal inputs. Its support lies inside the
    theoretical receptive field (``cnn_jax.receptive_field``), but its mass is
    roughly Gaussian and much narrower (Luo et al.'s point).

    Args:
      model: an ``nnx.Module`` on channels_last inputs (not changed; its mode,
        ``.train()`` or ``.eval()``, is used as it is).
      input_shape: ``(H, W, C)`` of one example.
      layer: a layer name with a spatial output (see
        :func:`cnn_jax.interpret.layer_names`); needed for classifiers.
      num_samples: random inputs to average over.
      key: ``jax.random`` key of the inputs (default ``key(0)``).
      inputs: ``(num_samples, H, W, C)`` inputs to use instead of random ones.

    Returns:
      ``(H, W)`` non-negative map (normalise it for display).

    >>> erf = effective_receptive_field(model, (64, 64, 3), layer="layer2")  # doctest: +SKIP
    """
    op = "effective_receptive_field"
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{op}: model must be an nnx.Module, got {type(model).__name__}")
    if (
        isinstance(input_shape, (int, str))
        or not isinstance(input_shape, Sequence)
        or len(input_shape) != 3
        or not all(isinstance(d, int) and d > 0 for d in input_shape)
    ):
        raise ValueError(
            f"{op}: input_shape must be (H, W, C) of positive ints, got {input_shape!r}"
        )
    names = () if layer is None else check_layers(model, layer, op)
    if inputs is None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"{op}: num_samples must be an int >= 1, got {num_samples!r}")
        key = jax.random.key(0) if key is None else key
        inputs = jax.random.normal(key, (num_samples, *input_shape))
    elif tuple(inputs.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{op}: inputs must have shape (num_samples, *input_shape), got "
            f"{tuple(inputs.shape)} for input_shape {tuple(input_shape)}"
        )

    return _erf(*nnx.split(model), inputs, names)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _erf(graphdef, state, inputs, names):
    op = "effective_receptive_field"

    def feature_map(x):
        out, acts = run(graphdef, state, x, names)
        return acts[names[0]] if names else out

    shape = jax.eval_shape(feature_map, inputs[:1]).shape
    if len(shape) != 4:
        where = f"layer {names[0]!r}" if names else "the model's output"
        raise ValueError(
            f"{op}: {where} must be a (N, h, w, C) feature map (pass layer= "
            f"for a classifier), got shape {shape}"
        )
    ci, cj = shape[1] // 2, shape[2] // 2

    def centre(x):
        return jnp.sum(feature_map(x)[:, ci, cj, :])

    grads = jax.grad(centre)(inputs)  # examples are independent in eval mode
    return jnp.mean(jnp.sum(jnp.abs(grads), axis=-1), axis=0)
