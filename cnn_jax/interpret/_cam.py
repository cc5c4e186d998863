"""Class activation maps: Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++
(Chattopadhay et al. 2018), for any layer of any nnx model, by name."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import ops
from cnn_jax.interpret._capture import check_layers, run, scores, split_target


def _activations_and_gradients(graphdef, state, x, target, target_fn, name: str, op: str):
    """The layer's output ``A`` and ``d score / d A``, both ``(N, h, w, K)``."""
    shape = jax.eval_shape(lambda x: run(graphdef, state, x, (name,))[1][name], x)
    if len(shape.shape) != 4:
        raise ValueError(
            f"{op}: layer {name!r} must output (N, h, w, C) feature maps, got shape {shape.shape}"
        )

    def total(delta):
        out, acts = run(graphdef, state, x, (name,), {name: delta})
        return jnp.sum(scores(out, target, target_fn, op)), acts[name]

    grads, acts = jax.grad(total, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    return acts, grads


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _cam(graphdef, state, x, target, target_fn, name, upsample, op):
    acts, grads = _activations_and_gradients(graphdef, state, x, target, target_fn, name, op)
    if op == "grad_cam":
        weights = jnp.mean(grads, axis=(1, 2))
    else:  # Grad-CAM++
        g2 = grads**2
        denom = 2 * g2 + jnp.sum(acts, axis=(1, 2), keepdims=True) * grads**3
        alpha = jnp.where(denom != 0, g2 / jnp.where(denom != 0, denom, 1), 0)
        weights = jnp.sum(alpha * jax.nn.relu(grads), axis=(1, 2))
    cam = jax.nn.relu(jnp.einsum("nhwk,nk->nhw", acts, weights))
    if upsample:
        cam = ops.upsample(cam[..., None], size=tuple(x.shape[1:3]), method="linear")[..., 0]
    return cam


def _call(model, x, target, layer, upsample, op):
    (name,) = check_layers(model, layer, op)
    target, target_fn = split_target(target, op)
    return _cam(*nnx.split(model), x, target, target_fn, name, bool(upsample), op)


def grad_cam(model, x, target, layer: str, *, upsample: bool = True):
    """Grad-CAM: where in the image the evidence for ``target`` is, seen at ``layer``.

    With ``A`` the layer's output ``(N, h, w, K)`` and ``y`` the target score,
    ``weights[n, k] = mean_{i,j} dy / dA[n, i, j, k]`` and ``cam = relu(sum_k
    weights[:, k] * A[..., k])`` (Selvaraju et al. 2017, eqs. 1-2).

    Args:
      model: an ``nnx.Module`` mapping ``x`` to logits ``(N, classes)`` (or anything
        a callable ``target`` reduces to scores). It is not changed; call
        ``model.eval()`` first so examples do not interact through BatchNorm.
      x: input ``(N, H, W, C)``.
      target: class index, ``(N,)`` class indices, or a callable ``output -> (N,)``.
      layer: a layer name (``"layer4"``, ``"features.8"``), see
        :func:`cnn_jax.interpret.layer_names`; usually the last conv stage.
      upsample: resize the map bilinearly to ``(H, W)``; False keeps ``(h, w)``.

    Returns:
      ``(N, H, W)`` (or ``(N, h, w)``) non-negative maps; scale each by its maximum to
      display it. jit- and vmap-able (``layer`` and ``upsample`` are static).

    >>> cam = grad_cam(model, x, target=3, layer="layer4")  # doctest: +SKIP
    """
    return _call(model, x, target, layer, upsample, "grad_cam")


def grad_cam_plus_plus(model, x, target, layer: str, *, upsample: bool = True):
    """Grad-CAM++: Grad-CAM with per-pixel weights, better for several instances.

    With ``g = dy / dA`` (the exponential-score closed form of Chattopadhay et al.
    2018, eq. 19): ``alpha = g**2 / (2 g**2 + sum_{a,b} A[a, b] * g**3)`` (0 where the
    denominator is 0), ``weights[k] = sum_{i,j} alpha * relu(g)`` and ``cam =
    relu(sum_k weights[k] A[..., k])``. Arguments and result as :func:`grad_cam`.
    """
    return _call(model, x, target, layer, upsample, "grad_cam_plus_plus")
