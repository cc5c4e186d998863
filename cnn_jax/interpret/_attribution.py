"""Input attributions: vanilla gradients (Simonyan et al. 2014), SmoothGrad (Smilkov et
al. 2017) and integrated gradients (Sundararajan et al. 2017)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.interpret._capture import input_gradient, split_target


def _check_model(model, op):
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{op}: model must be an nnx.Module, got {type(model).__name__}")


def _check_count(value, name, op):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{op}: {name} must be an int >= 1, got {value!r}")
    return value


def saliency(model, x, target):
    """Vanilla gradient: ``d score / d x``, shaped like ``x``.

    Simonyan et al.'s saliency map is ``jnp.abs(s).max(-1)`` of the result.

    Args:
      model: an ``nnx.Module`` (not changed; call ``model.eval()`` first).
      x: input ``(N, H, W, C)``.
      target: class index, ``(N,)`` class indices, or a callable ``output -> (N,)``.

    Returns:
      The gradient, shaped like ``x``. jit- and vmap-able.
    """
    _check_model(model, "saliency")
    target, target_fn = split_target(target, "saliency")
    return _saliency(*nnx.split(model), x, target, target_fn)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _saliency(graphdef, state, x, target, target_fn):
    return input_gradient(graphdef, state, target, target_fn, "saliency")(x)


def smooth_grad(model, x, target, *, key, num_samples: int = 16, noise_level: float = 0.15):
    """SmoothGrad: the gradient averaged over ``num_samples`` noisy copies of ``x``.

    The noise is ``jax.random.normal(key, (num_samples, *x.shape))`` scaled by
    ``noise_level * (max(x_n) - min(x_n))`` per example (10-20% in the paper).

    Args:
      model, x, target: as :func:`saliency`.
      key: a ``jax.random`` key for the noise.
      num_samples: noisy copies (all evaluated in one vmapped batch).
      noise_level: noise scale relative to each example's value range.

    Returns:
      The averaged gradient, shaped like ``x``.
    """
    op = "smooth_grad"
    _check_model(model, op)
    num_samples = _check_count(num_samples, "num_samples", op)
    target, target_fn = split_target(target, op)
    return _smooth_grad(*nnx.split(model), x, target, target_fn, key, num_samples, noise_level)


@functools.partial(jax.jit, static_argnums=(0, 4, 6))
def _smooth_grad(graphdef, state, x, target, target_fn, key, num_samples, noise_level):
    axes = tuple(range(1, x.ndim))
    sigma = noise_level * (
        jnp.max(x, axis=axes, keepdims=True) - jnp.min(x, axis=axes, keepdims=True)
    )
    grad = input_gradient(graphdef, state, target, target_fn, "smooth_grad")
    noise = jax.random.normal(key, (num_samples, *x.shape), x.dtype)
    return jnp.mean(jax.vmap(lambda n: grad(x + sigma * n))(noise), axis=0)


def integrated_gradients(
    model, x, target, *, baseline=None, steps: int = 64, batch_size: int | None = 16
):
    """Integrated gradients: ``(x - x') * integral_0^1 grad(x' + a (x - x')) da``.

    The integral is the trapezoidal rule on ``steps`` intervals, so attributions sum
    to ``score(x) - score(x')`` up to the quadrature error (completeness, the
    method's axiom; check it with a few more steps if it matters).

    Args:
      model, x, target: as :func:`saliency`.
      baseline: ``x'``, broadcastable to ``x``; None is the black image (zeros).
      steps: intervals of the path (20-300 in the paper).
      batch_size: path points evaluated together (``jax.lax.map``'s batch size;
        None evaluates all ``steps + 1`` at once).

    Returns:
      Attributions shaped like ``x``.
    """
    op = "integrated_gradients"
    _check_model(model, op)
    steps = _check_count(steps, "steps", op)
    if batch_size is not None:
        batch_size = _check_count(batch_size, "batch_size", op)
    target, target_fn = split_target(target, op)
    baseline = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(baseline, x.shape)
    return _integrated_gradients(
        *nnx.split(model), x, target, target_fn, baseline, steps, batch_size
    )


@functools.partial(jax.jit, static_argnums=(0, 4, 6, 7))
def _integrated_gradients(graphdef, state, x, target, target_fn, baseline, steps, batch_size):
    grad = input_gradient(graphdef, state, target, target_fn, "integrated_gradients")
    alphas = jnp.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
    grads = jax.lax.map(
        lambda a: grad(baseline + a * (x - baseline)), alphas, batch_size=batch_size
    )
    weights = jnp.ones(steps + 1, x.dtype).at[jnp.array([0, steps])].set(0.5) / steps
    return (x - baseline) * jnp.tensordot(weights, grads, axes=1)
