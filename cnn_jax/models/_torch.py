"""Load PyTorch ``state_dict`` weights into cnn_jax / flax.nnx models by name.

PyTorch is not imported: tensors are read through ``.detach().cpu().numpy()`` when
they have it, anything else through ``numpy.asarray``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnn_jax.models._common import named_modules
from cnn_jax.nn._conv import Conv, ConvTranspose, DepthwiseConv, SeparableConv

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
    if hasattr(type(module), "torch_weights"):
        return list(module.torch_weights())
    if isinstance(module, SeparableConv):
        n, layout = len(module.kernel_size), module.layout
        # A PyTorch separable conv is two convs; it has no single standard name.
        out = [("depthwise.weight", "depthwise_kernel", _conv_weight(layout, n)),
               ("pointwise.weight", "pointwise_kernel", _conv_weight(layout, n))]
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
            updates.append((variable, jnp.asarray(value, dtype=variable.get_value().dtype)))
    if strict:
        unmapped = [
            ".".join(map(str, path)) for path, node in nnx.iter_graph(model)
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
            k for k in state_dict
            if k not in expected and k.rsplit(".", 1)[-1] not in _IGNORED
        )
        if unexpected:
            raise ValueError(
                f"{op}: state_dict must only hold weights of the model, got unexpected "
                f"key(s) {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            )
    for variable, value in updates:
        variable.set_value(value)
    return model
