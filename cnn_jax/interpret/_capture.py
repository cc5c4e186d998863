"""Run a model with named layers "tapped": their outputs recorded and, for gradients,
shifted by a zero-valued input that ``jax.grad`` can differentiate with respect to.

Layers are named by their PyTorch-style dotted path in the nnx graph (``layer4``,
``layer4.1.conv2``, ``features.8``), as in :func:`cnn_jax.summary` and
:func:`cnn_jax.models.load_torch_state_dict`. The model is never changed: each call
works on a copy (``nnx.merge(*nnx.split(model))``) in which the named sub-modules are
replaced, in their parent, by a function that calls the original and records its
output (``cnn_jax.nn.intercept_calls``). State updates of the copy (BatchNorm
statistics in training mode, dropout keys) are dropped, so call ``model.eval()``
first for per-example results.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.nn import call_paths, intercept_calls


def layer_names(model: nnx.Module) -> list[str]:
    """The names :func:`features`, :func:`grad_cam` and friends accept for ``model``.

    Every callable sub-module, in graph order (attributes sorted by name); for a
    ResNet the blocks are ``layer4.0``, ``layer4.1`` (the stage lists themselves are
    never called).

    Examples:
        >>> layer_names(cj.models.LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)))[:3]
        ['conv1', 'conv2', 'fc1']
    """
    return list(call_paths(model))


def check_layers(model, layers, op: str) -> tuple[str, ...]:
    """``layers`` (a name or a sequence of names) as a tuple of known names."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{op}: model must be an nnx.Module, got {type(model).__name__}")
    names = (layers,) if isinstance(layers, str) else layers
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{op}: layer must be a layer name or a sequence of names, got {layers!r}")
    known = call_paths(model)
    for name in names:
        if name not in known:
            sample = ", ".join(repr(n) for n in list(known)[:8])
            raise ValueError(
                f"{op}: layer must name a sub-module of the model (one of "
                f"{sample}, ...; see cnn_jax.interpret.layer_names), got {name!r}"
            )
    return tuple(names)


def run(graphdef, state, x, layers: tuple[str, ...] = (), deltas: dict | None = None):
    """``(model(x), {name: output})`` for the model ``nnx.merge(graphdef, state)`` (a fresh
    copy) with ``layers`` tapped.

    With ``deltas``, each tapped output gets ``deltas[name]`` added (zeros in practice),
    so the gradient with respect to ``deltas[name]`` is the gradient with respect to
    that layer's output.
    """
    copy = nnx.merge(graphdef, state)
    record: dict = {}

    def tap(name, layer):
        def call(*args, **kwargs):
            out = layer(*args, **kwargs)
            if deltas is not None:
                out = out + deltas[name]
            record.setdefault(name, out)
            return out

        return call

    intercept_calls(copy, tap, names=layers)
    out = copy(x)
    missing = [name for name in layers if name not in record]
    if missing:
        raise ValueError(
            f"layer {missing[0]!r} was not called in the forward pass, so it has no activation"
        )
    return out, record


@functools.partial(jax.jit, static_argnums=(0, 3))
def _features(graphdef, state, x, names):
    return run(graphdef, state, x, names)[1]


def features(model: nnx.Module, x, layers) -> dict:
    """Intermediate activations of ``model`` on ``x``, by layer name.

    Args:
      model: an ``nnx.Module`` (its state is not changed; see the module docstring).
      x: the model's input, e.g. ``(N, H, W, C)``.
      layers: a layer name (``"layer4.1"``, ``"features.8"``, ``"layer1.0.conv2"``) or
        a sequence of names; :func:`layer_names` lists them.

    Returns:
      ``{name: output}`` with each layer's output (its first call, if it runs more
      than once). jit- and vmap-able.

    >>> acts = features(model, x, ["conv1", "conv2"])
    >>> acts["conv1"].shape  # doctest: +SKIP
    (2, 28, 28, 6)
    """
    names = check_layers(model, layers, "features")
    return _features(*nnx.split(model), x, names)


def split_target(target, op: str):
    """``target`` as ``(index array or None, callable or None)``; the callable is static."""
    if callable(target):
        return None, target
    if isinstance(target, bool) or not (isinstance(target, int) or hasattr(target, "shape")):
        raise TypeError(
            f"{op}: target must be a class index, an (N,) array of them or a "
            f"callable, got {target!r}"
        )
    return jnp.asarray(target), None


def scores(out, target, target_fn, op: str):
    """Per-example scalar scores ``(N,)`` from the model's output and the target."""
    if target_fn is not None:
        s = target_fn(out)
        if not hasattr(s, "shape") or s.shape != out.shape[:1]:
            raise ValueError(
                f"{op}: target(output) must return one score per example, shape "
                f"{out.shape[:1]}, got {getattr(s, 'shape', s)}"
            )
        return s
    if out.ndim != 2:
        raise ValueError(
            f"{op}: target must be a callable (output -> (N,) scores) for a "
            f"model whose output is not (N, classes), got output shape "
            f"{tuple(out.shape)}"
        )
    if (
        not jnp.issubdtype(target.dtype, jnp.integer)
        or target.ndim not in (0, 1)
        or (target.ndim == 1 and target.shape[0] != out.shape[0])
    ):
        raise ValueError(
            f"{op}: target must be an int or an int array of shape "
            f"({out.shape[0]},), got {target.dtype} array of shape {target.shape}"
        )
    target = jnp.broadcast_to(target, out.shape[:1])
    return jnp.take_along_axis(out, target[:, None], axis=1)[:, 0]


def input_gradient(graphdef, state, target, target_fn, op: str):
    """``x -> d score / d x`` (per example; the scores of a batch are summed)."""

    def total(x):
        return jnp.sum(scores(run(graphdef, state, x)[0], target, target_fn, op))

    return jax.grad(total)
