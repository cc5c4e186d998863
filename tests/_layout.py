"""Layout conversions and the PyTorch value+gradient oracle shared by the op tests.

PyTorch's layout is channels_first: arrays ``(N, C, *spatial)`` (``(C, *spatial)``
unbatched), conv kernels OIHW ``(O, I, *k)``, transposed-conv kernels
``(I, O, *k)``. cnn_jax's channels_last puts the channel axis last: ``(N, *spatial,
C)``, HWIO ``(*k, I, O)``, and ``(*k, I, O)`` for transposed convs.
"""

import jax
import numpy as np
import pytest
import torch


def to_cl(a, batched=True):
    """channels_first ``(N, C, *spatial)`` -> channels_last ``(N, *spatial, C)``."""
    return np.moveaxis(a, 1 if batched else 0, -1)


def to_cf(a, batched=True):
    """channels_last ``(N, *spatial, C)`` -> channels_first ``(N, C, *spatial)``."""
    return np.moveaxis(a, -1, 1 if batched else 0)


def to_layout(a, layout, batched=True):
    """A channels_first array in ``layout``."""
    return a if layout == "channels_first" else to_cl(a, batched)


def from_layout(a, layout, batched=True):
    """An array in ``layout`` as channels_first (PyTorch's)."""
    return a if layout == "channels_first" else to_cf(a, batched)


def kernel_to_cl(w, n):
    """Conv kernel OIHW ``(O, I, *k)`` -> HWIO ``(*k, I, O)``."""
    return np.moveaxis(w, (0, 1), (n + 1, n))


def kernel_to_cf(w, n):
    """Conv kernel HWIO -> OIHW."""
    return np.moveaxis(w, (n + 1, n), (0, 1))


def tkernel_to_cl(w, n):
    """PyTorch transposed-conv weight ``(C_in, C_out/G, *k)`` -> ``(*k, C_in, C_out/G)``."""
    return np.moveaxis(w, (0, 1), (n, n + 1))


def tkernel_to_cf(w, n):
    """Transposed-conv weight ``(*k, C_in, C_out/G)`` -> PyTorch's."""
    return np.moveaxis(w, (n, n + 1), (0, 1))


def torch_value_and_grad(fn, x, g_seed):
    """torch output and the gradient of ``sum(y * g)`` for a fixed random ``g``."""
    t = torch.tensor(x, requires_grad=True)
    y = fn(t)
    g = np.random.default_rng(g_seed).standard_normal(tuple(y.shape)).astype(x.dtype)
    y.backward(torch.tensor(g))
    return y.detach().numpy(), t.grad.numpy(), g


def parametrize_configs(draw, count: int, names: str):
    """``pytest.mark.parametrize("config", ...)`` over ``count`` configs drawn once, at
    collection, by ``draw(rng)`` from a fixed seed (it returns None for an invalid draw,
    which is skipped): one test id per config tuple (fields named by ``names``, each in
    the id but ``pads``), with a layout appended, channels_first and channels_last in
    turn."""
    rng, configs = np.random.default_rng(0), []
    while len(configs) < count:
        config = draw(rng)
        if config is not None:
            configs.append(config)
    params = []
    for i, config in enumerate(configs):
        layout = ("channels_first", "channels_last")[i % 2]
        fields = [f"{k}{v}" for k, v in zip(names.split(), config) if k != "pads"]
        params.append(
            pytest.param((*config, layout), id="-".join([*fields, layout]).replace(" ", ""))
        )
    return pytest.mark.parametrize("config", params)


def random_geometry(rng, groups, k_high: int, s_high, sp_range):
    """A random conv ``(n, g, c_in, c_out, k, s, d, sp)``: 1 to 3 spatial dims, ``g``
    from ``groups``, 1 or 2 channels per group, kernel sizes below ``k_high``, strides
    below ``s_high(n)``, dilation 1 or 2, spatial sizes in ``sp_range``."""
    n = int(rng.integers(1, 4))
    g = int(rng.choice(groups))
    c_in, c_out = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
    k = tuple(int(v) for v in rng.integers(1, k_high, n))
    s = tuple(int(v) for v in rng.integers(1, s_high(n), n))
    d = tuple(int(v) for v in rng.integers(1, 3, n))
    sp = tuple(int(v) for v in rng.integers(*sp_range, n))
    return n, g, c_in, c_out, k, s, d, sp


def random_padding(rng, form: str, n: int, sp, k, s, d):
    """A random padding of ``form`` ("int", "tuple", "pairs", "valid" or "same") and the
    ``(low, high)`` pairs it means (the TF/XLA "same" rule derived independently)."""
    if form == "int":
        padding = int(rng.integers(0, 3))
        return padding, [(padding, padding)] * n
    if form == "tuple":
        padding = tuple(int(v) for v in rng.integers(0, 3, n))
        return padding, [(p, p) for p in padding]
    if form == "pairs":
        padding = tuple((int(a), int(b)) for a, b in rng.integers(0, 3, (n, 2)))
        return padding, list(padding)
    if form == "valid":
        return "valid", [(0, 0)] * n
    return "same", same_pads(sp, k, s, d)


def same_pads(sizes, k, s, d):
    """The TF/XLA 'same' rule: out = ceil(in / s), the extra pixel high."""
    pads = []
    for i, kk, ss, dd in zip(sizes, k, s, d):
        out = -(-i // ss)
        total = max((out - 1) * ss + dd * (kk - 1) + 1 - i, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def torch_vjp(fn, arrays, rng):
    """``fn(*tensors)`` (PyTorch, channels_first) and the gradients of ``sum(y * ct)``
    for a random ``ct``: ``(y, grads, ct)`` as float32 numpy arrays."""
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*tensors)
    ct = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    (y * torch.tensor(ct)).sum().backward()
    return y.detach().numpy(), [t.grad.numpy() for t in tensors], ct


def jax_vjp(fn, arrays, ct):
    """``fn(*arrays)`` and its VJP on ``ct``, in one jit (one compilation)."""

    @jax.jit
    def run(arrays, ct):
        y, vjp = jax.vjp(fn, *arrays)
        return y, vjp(ct)

    y, grads = run(tuple(arrays), ct)
    return np.asarray(y), [np.asarray(g) for g in grads]


def assert_all_close(actual, expected, msg, tol=1e-4):
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol, err_msg=msg)


def check_conv_against_torch(rng, ours, theirs, shapes, layout, kernel_cl, kernel_cf, msg):
    """``ours(x, w, b)`` (cnn_jax, ``layout``) against ``theirs`` (PyTorch, channels_first):
    values and the gradients of x, w and b, for random float32 arrays of ``shapes``
    (channels_first). ``kernel_cl``/``kernel_cf`` move w to and from channels_last.
    Returns the channels_first arrays drawn."""
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    ref, grads, ct = torch_vjp(theirs, arrays, rng)
    x, w, b = arrays
    if layout == "channels_last":
        x, w, ct = to_cl(x), kernel_cl(w), to_cl(ct)
    y, (gx, gw, gb) = jax_vjp(ours, (x, w, b), ct)
    if layout == "channels_last":
        y, gx, gw = to_cf(y), to_cf(gx), kernel_cf(gw)
    assert_all_close((y, gx, gw, gb), (ref, *grads), msg)
    return arrays
