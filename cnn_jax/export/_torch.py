"""PyTorch weights on disk: a ``state_dict`` as a ``.pt`` file and as ``safetensors``.

The names and layouts are torchvision's (:func:`cnn_jax.models.save_torch_state_dict`),
so ``torchvision.models.resnet18(num_classes=10).load_state_dict(torch.load(path))``
loads a cnn_jax ResNet-18 (with the same ``small_input`` stem). ``.safetensors`` is
written with ``safetensors.numpy``, which needs no PyTorch; the ``.pt`` file needs it.
"""

from __future__ import annotations

import os

import numpy as np

from cnn_jax.models import save_torch_state_dict


def _stem(path: str) -> str:
    root, ext = os.path.splitext(path)
    return root if ext in (".pt", ".pth", ".safetensors") else path


def export_torch(model, path: str) -> tuple[str, str]:
    """Write ``model``'s weights as a PyTorch ``state_dict``: ``.pt`` and ``.safetensors``.

    Args:
      model: an ``nnx.Module`` whose layers have PyTorch counterparts (the zoo's do).
      path: ``STEM.pt`` (or ``STEM``): writes ``STEM.pt`` (``torch.save`` of a dict of
        tensors) and ``STEM.safetensors``.

    Returns:
      ``(pt_path, safetensors_path)``.

    Raises:
      ImportError: ``safetensors`` or ``torch`` is missing.

    >>> export_torch(model, "weights.pt")  # doctest: +SKIP
    ('weights.pt', 'weights.safetensors')
    """
    state = save_torch_state_dict(model)
    try:
        import safetensors.numpy
        import torch
    except ImportError as e:
        raise ImportError(
            f"export_torch: needs {e.name}; pip install 'cnn-jax[export]' torch"
        ) from e
    stem = _stem(path)
    pt, st = stem + ".pt", stem + ".safetensors"
    safetensors.numpy.save_file(state, st)
    torch.save({k: _tensor(torch, v) for k, v in state.items()}, pt)
    return pt, st


def _tensor(torch, value: np.ndarray):
    if value.dtype.name == "bfloat16":  # numpy has no bfloat16; torch reads its bits
        return torch.from_numpy(value.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(value))
