"""Layout conversions and the PyTorch value+gradient oracle shared by the op tests."""

import numpy as np
import torch


def to_cl(a):
    """channels_first ``(N, C, *spatial)`` -> channels_last ``(N, *spatial, C)``."""
    return np.moveaxis(a, 1, -1)


def to_cf(a):
    """channels_last ``(N, *spatial, C)`` -> channels_first ``(N, C, *spatial)``."""
    return np.moveaxis(a, -1, 1)


def torch_value_and_grad(fn, x, g_seed):
    """torch output and the gradient of ``sum(y * g)`` for a fixed random ``g``."""
    t = torch.tensor(x, requires_grad=True)
    y = fn(t)
    g = np.random.default_rng(g_seed).standard_normal(tuple(y.shape)).astype(x.dtype)
    y.backward(torch.tensor(g))
    return y.detach().numpy(), t.grad.numpy(), g
