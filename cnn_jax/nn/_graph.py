"""Reading a model's graph: layer names, the receptive-field protocol, call interception.

* **Names.** A sub-module is named by its PyTorch-style dotted path (``layer1.0.conv1``,
  ``features.3``): ``nnx.Sequential``'s ``layers`` step is dropped, as PyTorch's
  ``nn.Sequential`` names its items directly. ``summary``, the PyTorch weight
  import/export, ``cnn_jax.interpret`` and ``cnn_jax.export`` all use these names.
* **The receptive-field protocol.** A layer declares ``receptive_field_spec``:
  ``(kernel_size, stride, dilation, padding_low)``, or None when it does not fit the
  ``(kernel, stride)`` recursion (it resizes: transposed conv, upsampling). A block or
  model declares ``main_path()``: the layers and blocks on its main path, in call order.
  :func:`main_path` expands that recursively, and reads any other module's children
  in graph order. ``cnn_jax.receptive_field(model)`` and ``cnn_jax.summary`` read it.
* **Interception.** :func:`intercept_calls` routes a model's layer calls through a
  wrapper by replacing each layer, in its parent, on a throw-away copy. Classes are
  never patched, so other models (and other threads tracing them) are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flax import nnx

from cnn_jax import ops


def _named_nodes(model: nnx.Module) -> list[tuple[str, tuple, nnx.Module]]:
    """``(dotted name, graph path, module)`` of every module in the graph, graph order."""
    nodes = dict(nnx.iter_graph(model))
    out = []
    for path, node in nodes.items():
        if not isinstance(node, nnx.Module):
            continue
        parts = [
            str(key)
            for i, key in enumerate(path)
            if not (key == "layers" and isinstance(nodes.get(path[:i]), nnx.Sequential))
        ]
        out.append((".".join(parts), path, node))
    return out


def named_modules(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """Every sub-module with its PyTorch-style dotted name (``layer1.0.conv1``).

    ``nnx.Sequential`` keeps its items under ``layers``; PyTorch's ``nn.Sequential``
    names them directly (``downsample.0``), so that path step is dropped. The root
    module has the name ``""``. Containers that are never called (``nnx.List``) are
    listed too.

    Examples:
        >>> [name for name, _ in named_modules(nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0))))]
        ['0', '']
    """
    return [(name, node) for name, _, node in _named_nodes(model)]


def call_paths(model: nnx.Module) -> dict[str, tuple]:
    """``{dotted name: graph path}`` of every sub-module that can be called, in graph
    order (the root and never-called containers such as ``nnx.List`` left out)."""
    out = {}
    for name, path, node in _named_nodes(model):
        if path and callable(node):
            out.setdefault(name, path)
    return out


def intercept_calls(model: nnx.Module, wrap: Callable, names: Iterable[str] | None = None):
    """Route calls of ``model``'s sub-modules through ``wrap``, in place.

    Each callable sub-module ``m`` named ``name`` (all of them, or those in ``names``)
    is replaced, in its parent, by ``wrap(name, m)``: a callable that takes ``m``'s
    arguments and normally calls ``m``. Use it on a copy made for one trace
    (``nnx.merge(*nnx.split(model))``): the copy stops being a plain module graph.
    Nested layers are replaced in their own parents, so ``wrap`` sees every level.
    """
    nodes = dict(nnx.iter_graph(model))
    paths = call_paths(model)
    for name in paths if names is None else names:
        path = paths[name]
        parent, key = nodes[path[:-1]], path[-1]
        wrapped = wrap(name, nodes[path])
        if isinstance(key, int):
            parent[key] = wrapped
        else:
            setattr(parent, key, wrapped)


def main_path(module) -> list:
    """The layers on ``module``'s main path, in call order (the receptive-field protocol).

    A module with ``main_path()`` gives its items, each expanded in turn; a layer (it
    has a ``receptive_field_spec`` attribute) is itself; any other module contributes
    its children's main paths in graph order (so a ``Sequential`` of conv, BatchNorm
    and activation gives its conv), leaving out layers whose spec is None.
    """
    return _path(module, listed=True)


def _path(node, listed: bool) -> list:
    if hasattr(node, "main_path"):
        return [layer for item in node.main_path() for layer in _path(item, True)]
    if hasattr(node, "receptive_field_spec"):
        # A layer named on a main path must have a spec (the reader says so if not); one
        # found in the graph without a spec (it resizes) is skipped.
        return [node] if listed or node.receptive_field_spec is not None else []
    if not isinstance(node, nnx.Module):
        return []
    return [layer for _, child in nnx.iter_children(node) for layer in _path(child, False)]


def receptive_field_spec(layer) -> tuple:
    """A main-path layer's ``(kernel_size, stride, dilation, padding_low)``."""
    spec = getattr(layer, "receptive_field_spec", None)
    if spec is None:
        raise ValueError(
            f"receptive_field: layer {type(layer).__name__} has no receptive_field_spec"
        )
    return spec


@ops.receptive_field.register(nnx.Module)
def _receptive_field_of_module(model: nnx.Module) -> ops.ReceptiveField:
    """``cnn_jax.receptive_field(model)``: the arithmetic over the model's main path."""
    return ops.receptive_field([receptive_field_spec(layer) for layer in main_path(model)])
