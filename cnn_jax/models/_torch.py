"""Load PyTorch ``state_dict`` weights into cnn_jax / flax.nnx models by name.

PyTorch is not imported: tensors are read through ``.detach().cpu().numpy()`` when
they have it, anything else through ``numpy.asarray``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnn_jax.nn import Conv, ConvTranspose, DepthwiseConv, SeparableConv, named_modules

# Entries of a PyTorch state_dict that carry no weights.
_IGNORED = ("num_batches_tracked",)


def _to_numpy(value, key: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - any failure means "not an array"
        array = None
    if array is None or array.dtype.kind not in "biuf":
        raise TypeError(
            f"load_torch_state_dict: state_dict[{key!r}] must be an array or a tensor, "
            f"got {type(value).__name__}"
        )
    return array


def _conv_weight(layout: str, n: int):
    """PyTorch ``(O, I // g, *k)`` -> channels_last ``(*k, I // g, O)`` (HWIO)."""
    if layout == "channels_first":
        return lambda w: w
    return lambda w: np.transpose(w, tuple(range(2, n + 2)) + (1, 0))


def _conv_transpose_weight(layout: str, n: int):
    """PyTorch ``(I, O // g, *k)`` -> channels_last ``(*k, I, O // g)``."""
    if layout == "channels_first":
        return lambda w: w
    return lambda w: np.transpose(w, tuple(range(2, n + 2)) + (0, 1))


def _identity(w):
    return w


def _targets(module) -> list[tuple[str, str, object]]:
    """``(torch name, attribute, torch -> ours)`` for the weights of one layer.

    A module holding parameters of its own (not in a child layer, e.g. ConvNeXt's
    ``layer_scale``) says how to load them with a ``torch_weights()`` method that
    returns such triples.
    """
    if hasattr(type(module), "torch_weights"):  # a 4th entry (the inverse) is for saving
        return [tuple(entry[:3]) for entry in module.torch_weights()]
    if isinstance(module, SeparableConv):
        n, layout = len(module.kernel_size), module.layout
        # A PyTorch separable conv is two convs; it has no single standard name.
        out = [
            ("depthwise.weight", "depthwise_kernel", _conv_weight(layout, n)),
            ("pointwise.weight", "pointwise_kernel", _conv_weight(layout, n)),
        ]
        if module.bias is not None:
            out.append(("pointwise.bias", "bias", _identity))
        return out
    if isinstance(module, (Conv, DepthwiseConv)):
        convert = _conv_weight(module.layout, len(module.kernel_size))
    elif isinstance(module, ConvTranspose):
        convert = _conv_transpose_weight(module.layout, len(module.kernel_size))
    elif isinstance(module, nnx.Conv):  # flax's own conv: kernel (*k, I // g, O)
        convert = _conv_weight("channels_last", len(module.kernel_size))
    elif isinstance(module, nnx.Linear):
        convert = np.transpose  # PyTorch (out, in) -> (in, out)
    elif isinstance(module, (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm)):
        out = []
        if getattr(module, "scale", None) is not None:
            out.append(("weight", "scale", _identity))
        if getattr(module, "bias", None) is not None:
            out.append(("bias", "bias", _identity))
        if isinstance(module, nnx.BatchNorm):
            out += [("running_mean", "mean", _identity), ("running_var", "var", _identity)]
        return out
    else:
        return []
    out = [("weight", "kernel", convert)]
    if getattr(module, "bias", None) is not None:
        out.append(("bias", "bias", _identity))
    return out


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping, *, strict: bool = True):
    """Copy a PyTorch ``state_dict`` into ``model`` in place, matching names.

    Names are PyTorch's dotted module paths: this library's models use torchvision's
    attribute names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
    ``fc``; ``features.3.conv.1.0``, ``classifier.1`` for MobileNetV2), and an
    ``nnx.Sequential``'s items are numbered like ``nn.Sequential``'s. Weights are
    converted per layer type:

    * ``Conv`` / ``DepthwiseConv`` (and ``flax.nnx.Conv``): ``(O, I // g, *k)`` ->
      ``(*k, I // g, O)`` for channels_last layers, unchanged for channels_first;
    * ``ConvTranspose``: ``(I, O // g, *k)`` -> ``(*k, I, O // g)`` (channels_last);
    * ``nnx.Linear``: ``(out, in)`` -> ``(in, out)``;
    * ``nnx.BatchNorm``: ``weight``/``bias``/``running_mean``/``running_var`` ->
      ``scale``/``bias``/``mean``/``var`` (``num_batches_tracked`` is ignored);
      ``LayerNorm``/``GroupNorm``: ``weight``/``bias``.

    Every entry is checked before anything is written, so a failed load leaves the
    model unchanged. Values are cast to the parameters' dtypes.

    Args:
      model: an ``nnx.Module`` (e.g. from :mod:`cnn_jax.models`).
      state_dict: mapping of names to ``torch.Tensor`` or numpy arrays.
      strict: raise on weights missing from ``state_dict`` and on unexpected keys
        (PyTorch's ``strict``); shape mismatches always raise.

    Returns:
      ``model`` (modified in place).

    Raises:
      ValueError: a missing or unexpected key (with ``strict``) or a shape mismatch,
        naming the key.

    >>> model = LeNet5(10, in_channels=1, rngs=nnx.Rngs(0))
    >>> load_torch_state_dict(model, torch_lenet.state_dict())  # doctest: +SKIP
    """
    op = "load_torch_state_dict"
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{op}: model must be an nnx.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{op}: state_dict must be a mapping of names to tensors, got "
            f"{type(state_dict).__name__}"
        )
    updates, expected, covered = [], set(), set()
    for prefix, module in named_modules(model):
        for suffix, attr, convert in _targets(module):
            key = f"{prefix}.{suffix}" if prefix else suffix
            expected.add(key)
            covered.add(id(getattr(module, attr)))
            if key not in state_dict:
                continue
            variable = getattr(module, attr)
            value = convert(_to_numpy(state_dict[key], key))
            want = tuple(variable.get_value().shape)
            if tuple(value.shape) != want:
                raise ValueError(
                    f"{op}: state_dict[{key!r}] must have shape {want} after conversion "
                    f"(module {prefix or type(model).__name__} is "
                    f"{type(module).__name__}), got {tuple(value.shape)} (PyTorch shape "
                    f"{tuple(np.shape(state_dict[key]))})"
                )
            # A copy: jnp.asarray may alias the tensor's CPU memory, and PyTorch updates
            # tensors in place (optimiser steps, BatchNorm statistics).
            updates.append(
                (variable, jnp.array(value, dtype=variable.get_value().dtype, copy=True))
            )
    if strict:
        unmapped = [
            ".".join(map(str, path))
            for path, node in nnx.iter_graph(model)
            if isinstance(node, (nnx.Param, nnx.BatchStat)) and id(node) not in covered
        ]
        if unmapped:
            raise ValueError(
                f"{op}: every weight of the model must have a PyTorch counterpart, but "
                f"{unmapped[:10]} belong to layers this loader does not know (strict=False "
                f"skips them)"
            )
        missing = sorted(expected - set(state_dict))
        if missing:
            raise ValueError(
                f"{op}: state_dict must hold every weight of the model, missing key(s) "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}"
            )
        unexpected = sorted(
            k for k in state_dict if k not in expected and k.rsplit(".", 1)[-1] not in _IGNORED
        )
        if unexpected:
            raise ValueError(
                f"{op}: state_dict must only hold weights of the model, got unexpected "
                f"key(s) {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            )
    for variable, value in updates:
        variable.set_value(value)
    return model


# ---------------------------------------------------------------- the other way round

_PROBE_SIZES = (2, 3, 5, 7, 11, 13)


def _to_torch(convert):
    """The inverse of a torch -> ours converter of :func:`_targets`.

    Every built-in converter is an axis permutation (identity, ``np.transpose``, the conv
    kernel layouts); converting a probe whose axes have distinct sizes reveals which, so
    the two directions cannot drift apart. A ``torch_weights()`` entry with a fourth
    element gives its inverse explicitly (needed for a reshape).
    """

    def inverse(value):
        shape = _PROBE_SIZES[: value.ndim]
        probe = np.arange(int(np.prod(shape))).reshape(shape)
        out = np.asarray(convert(probe))
        perm = tuple(shape.index(s) if s in shape else -1 for s in out.shape)
        if sorted(perm) != list(range(len(shape))) or not np.array_equal(
            out, np.transpose(probe, perm)
        ):
            return None
        return np.transpose(value, tuple(np.argsort(perm)))

    return inverse


def save_torch_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """A PyTorch ``state_dict`` of ``model``: the inverse of :func:`load_torch_state_dict`.

    Names are PyTorch's dotted module paths (torchvision's for the zoo), values numpy
    arrays in PyTorch's layouts: conv kernels ``(O, I // g, *k)``, transposed-conv
    kernels ``(I, O // g, *k)``, Linear ``(out, in)``; BatchNorm gives ``weight``,
    ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked`` (0).
    ``torch_module.load_state_dict({k: torch.from_numpy(v) ...})`` loads it, and
    ``load_torch_state_dict(other, save_torch_state_dict(model))`` copies ``model``'s
    weights into ``other`` exactly.

    Args:
      model: an ``nnx.Module`` whose every weight has a PyTorch counterpart.

    Returns:
      ``{name: np.ndarray}`` in ``model``'s parameter dtypes.

    Raises:
      ValueError: a weight of a layer this module does not know, or a converter it
        cannot invert, naming the weight.

    >>> sd = save_torch_state_dict(LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)))
    >>> sd["conv1.weight"].shape
    (6, 1, 5, 5)
    """
    op = "save_torch_state_dict"
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{op}: model must be an nnx.Module, got {type(model).__name__}")
    out, covered = {}, set()
    for prefix, module in named_modules(model):
        entries = (
            module.torch_weights() if hasattr(type(module), "torch_weights") else _targets(module)
        )
        for entry in entries:
            suffix, attr, convert = entry[:3]
            key = f"{prefix}.{suffix}" if prefix else suffix
            variable = getattr(module, attr)
            covered.add(id(variable))
            value = np.asarray(variable.get_value())
            torch_value = entry[3](value) if len(entry) > 3 else _to_torch(convert)(value)
            if torch_value is None:
                raise ValueError(
                    f"{op}: the converter of {key!r} ({type(module).__name__}.torch_weights) "
                    f"must be an axis permutation or come with its inverse as a fourth "
                    f"element, got one that changes {value.shape} otherwise"
                )
            out[key] = np.array(torch_value, order="C")  # writable, its own memory
        if isinstance(module, nnx.BatchNorm):
            out[f"{prefix}.num_batches_tracked" if prefix else "num_batches_tracked"] = np.zeros(
                (), np.int64
            )
    unmapped = [
        ".".join(map(str, path))
        for path, node in nnx.iter_graph(model)
        if isinstance(node, (nnx.Param, nnx.BatchStat)) and id(node) not in covered
    ]
    if unmapped:
        raise ValueError(
            f"{op}: every weight of the model must have a PyTorch counterpart, but "
            f"{unmapped[:10]} belong to layers this module does not know"
        )
    return out
