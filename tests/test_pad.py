"""cj.pad against torch.nn.functional.pad: values, gradients, every error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnn_jax as cj


def _torch_pad(x_cf, pads, mode, value=0.0):
    """torch pad of a channels_first array; torch lists (low, high) from the last dim."""
    flat = [a for lo_hi in reversed(pads) for a in lo_hi]
    kw = {"value": value} if mode == "constant" else {}
    return F.pad(torch.tensor(x_cf), flat, mode=mode, **kw)


def _cases(rng):
    """(n, shape_cf, pads, mode) grid, amounts within each mode's PyTorch limits."""
    cases = []
    shapes = {1: (2, 3, 5), 2: (2, 3, 4, 5), 3: (1, 2, 3, 4, 3)}
    for n, shape in shapes.items():
        for mode in ("constant", "reflect", "replicate", "circular"):
            sizes = shape[2:]
            limit = {"constant": 4, "reflect": None, "replicate": 4, "circular": None}[mode]
            pads = []
            for size in sizes:
                top = size - 1 if mode == "reflect" else size if mode == "circular" else limit
                pads.append((int(rng.integers(0, top + 1)), int(rng.integers(0, top + 1))))
            cases.append((n, shape, tuple(pads), mode))
    return cases


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_pad_matches_torch_values_and_grads(rng, layout):
    for _n, shape, pads, mode in _cases(rng):
        x = rng.standard_normal(shape).astype(np.float32)
        value = 1.5 if mode == "constant" else 0.0  # only "constant" takes a value
        ref = _torch_pad(x, pads, mode, value=value)
        ct = rng.standard_normal(tuple(ref.shape)).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        flat = [a for lo_hi in reversed(pads) for a in lo_hi]
        kw = {"value": 1.5} if mode == "constant" else {}
        (F.pad(xt, flat, mode=mode, **kw) * torch.tensor(ct)).sum().backward()
        if layout == "channels_last":
            xin, ct_in = np.moveaxis(x, 1, -1), np.moveaxis(ct, 1, -1)
        else:
            xin, ct_in = x, ct

        @jax.jit
        def f(x_, ct_):
            y_, vjp = jax.vjp(lambda a: cj.pad(a, pads, mode=mode, value=value, layout=layout), x_)
            return y_, vjp(ct_)[0]

        y, gx = f(xin, ct_in)
        if layout == "channels_last":
            y, gx = np.moveaxis(np.asarray(y), -1, 1), np.moveaxis(np.asarray(gx), -1, 1)
        np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=0, err_msg=f"{mode} {pads}")
        np.testing.assert_allclose(
            gx, xt.grad.numpy(), rtol=1e-6, atol=1e-6, err_msg=f"{mode} {pads}"
        )


def test_pad_zeros_is_constant_zero_and_int_tuple_forms(rng):
    x = rng.standard_normal((1, 3, 4, 2)).astype(np.float32)
    by_int = cj.pad(x, 1)
    by_tuple = cj.pad(x, (1, 1))
    by_pairs = cj.pad(x, ((1, 1), (1, 1)))
    expected = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for y in (by_int, by_tuple, by_pairs):
        np.testing.assert_array_equal(np.asarray(y), expected)
    np.testing.assert_array_equal(
        np.asarray(cj.pad(x, (2, 0), mode="zeros")), np.pad(x, ((0, 0), (2, 2), (0, 0), (0, 0)))
    )
    # mode strings are case-insensitive
    np.testing.assert_array_equal(
        np.asarray(cj.pad(x, 1, mode="Reflect")),
        np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect"),
    )


def test_reflect_by_hand():
    # [1 2 3] reflected by 2 on each side: 3 2 | 1 2 3 | 2 1
    x = jnp.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
    np.testing.assert_array_equal(
        np.asarray(cj.pad(x, 2, mode="reflect"))[0, :, 0], [3, 2, 1, 2, 3, 2, 1]
    )
    np.testing.assert_array_equal(
        np.asarray(cj.pad(x, 2, mode="replicate"))[0, :, 0], [1, 1, 1, 2, 3, 3, 3]
    )
    np.testing.assert_array_equal(
        np.asarray(cj.pad(x, ((3, 1),), mode="circular"))[0, :, 0], [1, 2, 3, 1, 2, 3, 1]
    )


def test_pad_composes_with_jit_and_vmap(rng):
    x = jnp.asarray(rng.standard_normal((3, 2, 5, 4)), jnp.float32)
    f = jax.jit(lambda v: cj.pad(v, ((1, 2),), mode="reflect", layout="channels_first"))
    batched = jax.vmap(f)(x)
    np.testing.assert_array_equal(np.asarray(batched), np.stack([np.asarray(f(v)) for v in x]))


def test_pad_errors():
    x = jnp.zeros((1, 3, 3, 1))
    with pytest.raises(ValueError, match="pad: padding must be non-negative"):
        cj.pad(x, ((-1, 0), (0, 0)))
    with pytest.raises(
        ValueError, match="pad: padding must be smaller than the input size.*mode='reflect'"
    ):
        cj.pad(x, 3, mode="reflect")
    with pytest.raises(
        ValueError, match="pad: padding must be at most the input size.*mode='circular'"
    ):
        cj.pad(x, ((4, 0), (0, 0)), mode="circular")
    with pytest.raises(ValueError, match="pad: mode must be one of"):
        cj.pad(x, 1, mode="mirror")
    with pytest.raises(ValueError, match="pad: layout must be one of"):
        cj.pad(x, 1, layout="NHWC")
    with pytest.raises(ValueError, match="pad: x must have at least 3 dims"):
        cj.pad(jnp.zeros((3, 3)), 1)
    with pytest.raises(
        ValueError, match=r"pad: padding as \(low, high\) pairs must have one pair per spatial dim"
    ):
        cj.pad(x, ((1, 1),))
    with pytest.raises(ValueError, match="pad: padding must be an int or a tuple of 2 ints"):
        cj.pad(x, (1, 1, 1))
    with pytest.raises(TypeError, match="pad: padding must be an int"):
        cj.pad(x, 1.5)
    with pytest.raises(ValueError, match="pad: padding must be an int, a tuple of 2 ints"):
        cj.pad(x, "same")
    with pytest.raises(
        ValueError, match="pad: x must have non-empty spatial dims for mode='replicate'"
    ):
        cj.pad(jnp.zeros((1, 0, 3, 1)), 1, mode="replicate")


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "value", [float("nan"), 1.5, -2, None, np.float32(3.0)], ids=["nan", "1.5", "-2", "None", "np3"]
)
def test_pad_refuses_a_value_its_mode_ignores(mode, value):
    # Only "constant" fills with value; every other mode used to drop it silently.
    # PyTorch's F.pad refuses a value for its non-constant modes too.
    x = np.ones((1, 2, 4, 4), np.float32)
    with pytest.raises(
        ValueError,
        match=rf"pad: value is only used with mode='constant' and "
        rf"must be left at 0.0 for mode='{mode}', got value=",
    ):
        cj.pad(jnp.asarray(x), 1, mode=mode, value=value, layout="channels_first")
    if mode != "zeros" and value is not None:
        with pytest.raises(RuntimeError, match="doesn't take in value argument"):
            F.pad(torch.tensor(x), (1, 1, 1, 1), mode=mode, value=float(value))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_pad_takes_the_default_value_with_any_mode(rng, mode):
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    ref = _torch_pad(x, ((1, 2), (2, 1)), "constant" if mode == "zeros" else mode).numpy()
    for zero in (0.0, 0, -0.0, np.float32(0), False):
        y = cj.pad(jnp.asarray(x), ((1, 2), (2, 1)), mode=mode, value=zero, layout="channels_first")
        np.testing.assert_array_equal(np.asarray(y), ref)


def test_pad_constant_takes_any_value_and_a_traced_one(rng):
    x = rng.standard_normal((1, 3, 3, 2)).astype(np.float32)
    for value in (float("nan"), float("inf"), -2.5):
        y = cj.pad(jnp.asarray(x), 1, mode="constant", value=value)
        ref = _torch_pad(np.moveaxis(x, -1, 1), ((1, 1), (1, 1)), "constant", value).numpy()
        np.testing.assert_array_equal(np.asarray(y), np.moveaxis(ref, 1, -1))
    f = jax.jit(lambda v: cj.pad(jnp.asarray(x), 1, mode="constant", value=v))
    assert float(f(4.0)[0, 0, 0, 0]) == 4.0
    # A traced value cannot be checked against 0: refused where the mode ignores it.
    with pytest.raises(ValueError, match=r"pad: value is only used with mode='constant'"):
        jax.jit(lambda v: cj.pad(jnp.asarray(x), 1, mode="reflect", value=v))(0.0)
