"""Global and adaptive pooling: PyTorch parity, numpy references, hand values, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _layout import to_cf, to_cl, torch_value_and_grad
from _pool_oracle import HALF_DTYPES, half_vs_torch, ulp

import cnn_jax as cj

TORCH_ADAPTIVE = {
    ("avg", 1): F.adaptive_avg_pool1d,
    ("avg", 2): F.adaptive_avg_pool2d,
    ("avg", 3): F.adaptive_avg_pool3d,
    ("max", 1): F.adaptive_max_pool1d,
    ("max", 2): F.adaptive_max_pool2d,
    ("max", 3): F.adaptive_max_pool3d,
}
OPS = {"avg": cj.adaptive_avg_pool, "max": cj.adaptive_max_pool}


def jax_value_and_grad(fn, x, g):
    """``fn(x)`` and the VJP with ``g``, in one jitted call (one compile per config)."""

    @jax.jit
    def run(a, ct):
        y, vjp = jax.vjp(fn, a)
        return y, vjp(ct)[0]

    y, dx = run(jnp.asarray(x), jnp.asarray(g))
    return np.asarray(y), np.asarray(dx)


# Spatial shapes and output sizes per rank: divisible, uneven, overlapping (out > in),
# None (keep), identity.
CASES = {
    1: ((9,), [(3,), (4,), (11,), 9]),
    2: ((7, 6), [(3, 2), (4, 5), (9, None), (None, 4), 1]),
    3: ((5, 4, 6), [(3, 3, 4), (None, 5, 1), 1]),
}


def both_layouts(op, x, g, *args):
    """Values and VJPs of ``op`` in both layouts, in channels_first, in one compile."""

    @jax.jit
    def run(a, ct):
        y_cf, vjp_cf = jax.vjp(lambda b: op(b, *args, layout="channels_first"), a)
        y_cl, vjp_cl = jax.vjp(lambda b: op(b, *args), jnp.moveaxis(a, 1, -1))
        return (
            y_cf,
            vjp_cf(ct)[0],
            jnp.moveaxis(y_cl, -1, 1),
            jnp.moveaxis(vjp_cl(jnp.moveaxis(ct, 1, -1))[0], -1, 1),
        )

    return [np.asarray(v) for v in run(jnp.asarray(x), jnp.asarray(g))]


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_adaptive_matches_torch(kind, n):
    spatial, sizes = CASES[n]
    rng = np.random.default_rng(n)
    if kind == "max":
        # Small integers: many ties, so the first-maximum gradient rule is exercised.
        x = rng.integers(-2, 3, (2, 3) + spatial).astype(np.float32)
    else:
        x = rng.standard_normal((2, 3) + spatial).astype(np.float32)
    for i, size in enumerate(sizes):
        ty, tg, g = torch_value_and_grad(lambda t: TORCH_ADAPTIVE[kind, n](t, size), x, i)
        y_cf, dx_cf, y_cl, dx_cl = both_layouts(OPS[kind], x, g, size)
        for y, dx in ((y_cf, dx_cf), (y_cl, dx_cl)):
            np.testing.assert_allclose(y, ty, rtol=1e-6, atol=1e-6, err_msg=f"{size}")
            np.testing.assert_allclose(dx, tg, rtol=1e-6, atol=1e-6, err_msg=f"{size}")


def test_adaptive_random_configs_match_torch():
    rng = np.random.default_rng(7)
    configs, inputs, expected = [], [], []
    for i in range(8):
        n = int(rng.integers(1, 4))
        spatial = tuple(int(v) for v in rng.integers(1, 8, n))
        size = tuple(int(v) for v in rng.integers(1, 9, n))
        kind = ("avg", "max")[i % 2]
        x = rng.integers(-3, 4, (2, 2) + spatial).astype(np.float32)
        ty, tg, g = torch_value_and_grad(lambda t: TORCH_ADAPTIVE[kind, n](t, size), x, i)
        configs.append((kind, size))
        inputs.append((x, g))
        expected.append((ty, tg))

    @jax.jit
    def run(inputs):
        out = []
        for (kind, size), (x, g) in zip(configs, inputs):
            y, vjp = jax.vjp(lambda a: OPS[kind](a, size, layout="channels_first"), x)
            out.append((y, vjp(g)[0]))
        return out

    for config, (y, dx), (ty, tg) in zip(configs, run(inputs), expected):
        np.testing.assert_allclose(np.asarray(y), ty, rtol=1e-6, atol=1e-6, err_msg=str(config))
        np.testing.assert_allclose(np.asarray(dx), tg, rtol=1e-6, atol=1e-6, err_msg=str(config))


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_unbatched_matches_torch(kind, rng):
    x = rng.standard_normal((3, 7, 5)).astype(np.float32)
    ty = TORCH_ADAPTIVE[kind, 2](torch.tensor(x), (3, 2))
    y = OPS[kind](x, (3, 2), layout="channels_first")
    np.testing.assert_allclose(np.asarray(y), ty.numpy(), rtol=1e-6, atol=1e-6)
    y = OPS[kind](np.moveaxis(x, 0, -1), (3, 2))
    np.testing.assert_allclose(np.moveaxis(np.asarray(y), -1, 0), ty.numpy(), rtol=1e-6, atol=1e-6)


def test_adaptive_avg_hand_bins():
    # in=5, out=3: bins [0, 2), [1, 4), [3, 5) -> means 0.5, 2, 3.5 of arange(5).
    x = jnp.arange(5.0).reshape(1, 5, 1)
    np.testing.assert_array_equal(np.asarray(cj.adaptive_avg_pool(x, 3))[0, :, 0], [0.5, 2.0, 3.5])
    # in=2, out=5: bins [0,1), [0,1), [0,2), [1,2), [1,2) (out > in repeats and overlaps).
    x = jnp.array([2.0, 4.0]).reshape(1, 2, 1)
    np.testing.assert_array_equal(
        np.asarray(cj.adaptive_avg_pool(x, 5))[0, :, 0], [2.0, 2.0, 3.0, 4.0, 4.0]
    )
    np.testing.assert_array_equal(
        np.asarray(cj.adaptive_max_pool(x, 5))[0, :, 0], [2.0, 2.0, 4.0, 4.0, 4.0]
    )


def test_adaptive_max_gradient_goes_to_first_maximum():
    # One 2x2 bin of equal values: the whole gradient goes to the top-left element
    # (first in row-major scan order), not split four ways as jnp.max would.
    x = jnp.ones((1, 4, 4, 1))
    dx = jax.jit(jax.grad(lambda a: cj.adaptive_max_pool(a, 2).sum()))(x)[0, :, :, 0]
    expect = np.zeros((4, 4))
    expect[::2, ::2] = 1.0
    np.testing.assert_array_equal(np.asarray(dx), expect)
    # Maximum in the second row of its bin, tied twice there: the first column wins.
    x = np.zeros((1, 1, 2, 3), np.float32)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = 5.0
    dx = jax.jit(jax.grad(lambda a: cj.adaptive_max_pool(a, 1, layout="channels_first").sum()))(x)
    expect = np.zeros((2, 3))
    expect[1, 1] = 1.0
    np.testing.assert_array_equal(np.asarray(dx)[0, 0], expect)


def test_adaptive_max_gradient_sums_to_output_count(rng):
    x = rng.integers(0, 2, (2, 6, 9, 3)).astype(np.float32)
    dx = jax.jit(jax.grad(lambda a: cj.adaptive_max_pool(a, (4, 5)).sum()))(x)
    assert float(dx.sum()) == 2 * 4 * 5 * 3
    # Uneven bins overlap by at most one element per axis: at most 2 * 2 bins each.
    assert set(np.unique(np.asarray(dx))) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def test_adaptive_jit_vmap_and_forward_mode(rng):
    x = rng.standard_normal((4, 7, 6, 2)).astype(np.float32)
    t = rng.standard_normal(x.shape).astype(np.float32)
    u = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)

    @jax.jit
    def run(x, t, u):
        direct = cj.adaptive_max_pool(x, (3, 2))
        mapped = jax.vmap(lambda a: cj.adaptive_max_pool(a, (3, 2)))(x)
        # custom_jvp keeps forward mode: <jvp(t), u> == <t, vjp(u)>.
        _, tangent = jax.jvp(lambda a: cj.adaptive_max_pool(a, (3, 2)), (x,), (t,))
        _, vjp = jax.vjp(lambda a: cj.adaptive_max_pool(a, (3, 2)), x)
        return direct, mapped, jnp.vdot(tangent, u), jnp.vdot(t, vjp(u)[0])

    direct, mapped, lhs, rhs = run(x, t, u)
    np.testing.assert_array_equal(np.asarray(mapped), np.asarray(direct))
    ty = F.adaptive_max_pool2d(torch.tensor(to_cf(x)), (3, 2)).numpy()
    np.testing.assert_array_equal(to_cf(np.asarray(direct)), ty)
    np.testing.assert_allclose(float(lhs), float(rhs), rtol=1e-5)


def test_adaptive_keeps_dtype():
    x = jnp.ones((1, 5, 5, 2), jnp.bfloat16)
    assert cj.adaptive_avg_pool(x, 3).dtype == jnp.bfloat16
    assert cj.adaptive_max_pool(x, 3).dtype == jnp.bfloat16
    assert cj.global_avg_pool(x).dtype == jnp.bfloat16


# ------------------------------------------------------------------------ global pools


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pools_match_numpy(n, keepdims, rng):
    x = rng.standard_normal((2, 3) + (4, 3, 2)[:n]).astype(np.float32)
    axes_cf = tuple(range(2, 2 + n))
    axes_cl = tuple(range(1, 1 + n))
    for op, ref in ((cj.global_avg_pool, np.mean), (cj.global_max_pool, np.max)):
        y = op(x, keepdims=keepdims, layout="channels_first")
        np.testing.assert_allclose(
            np.asarray(y), ref(x, axis=axes_cf, keepdims=keepdims), rtol=1e-6
        )
        y = op(to_cl(x), keepdims=keepdims)
        np.testing.assert_allclose(
            np.asarray(y), ref(to_cl(x), axis=axes_cl, keepdims=keepdims), rtol=1e-6
        )
        assert y.shape == ((2,) + (1,) * n + (3,) if keepdims else (2, 3))


def test_global_max_gradient_matches_torch_adaptive(rng):
    x = rng.integers(-1, 2, (2, 3, 4, 5)).astype(np.float32)
    ty, tg, g = torch_value_and_grad(lambda t: F.adaptive_max_pool2d(t, 1), x, 7)
    y, dx = jax_value_and_grad(
        lambda a: cj.global_max_pool(a, keepdims=True, layout="channels_first"), x, g
    )
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(dx, tg)
    ty, tg, g = torch_value_and_grad(lambda t: F.adaptive_avg_pool2d(t, 1), x, 8)
    y, dx = jax_value_and_grad(lambda a: cj.global_avg_pool(a, keepdims=True), to_cl(x), to_cl(g))
    np.testing.assert_allclose(to_cf(y), ty, rtol=1e-6)
    np.testing.assert_allclose(to_cf(dx), tg, rtol=1e-6)


def test_global_avg_hand_value():
    x = jnp.arange(8.0).reshape(1, 2, 2, 2)  # channels_last: channel 0 = 0,2,4,6
    np.testing.assert_array_equal(np.asarray(cj.global_avg_pool(x)), [[3.0, 4.0]])
    np.testing.assert_array_equal(np.asarray(cj.global_max_pool(x)), [[6.0, 7.0]])


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("op", [cj.adaptive_avg_pool, cj.adaptive_max_pool])
def test_adaptive_errors(op):
    x = jnp.ones((1, 4, 4, 2))
    name = op.__name__
    with pytest.raises(ValueError, match=f"{name}: output_size must be >= 1.*got 0"):
        op(x, 0)
    with pytest.raises(ValueError, match="output_size must be >= 1.*-1"):
        op(x, (2, -1))
    with pytest.raises(TypeError, match="output_size must be an int, None or a tuple.*2.5"):
        op(x, 2.5)
    with pytest.raises(TypeError, match="output_size must be an int, None or a tuple.*True"):
        op(x, (True, 2))
    with pytest.raises(ValueError, match="x must have 6 dims .*4-D output_size"):
        op(x, (2, 2, 2, 2))
    with pytest.raises(ValueError, match="output_size must have one entry per spatial dim"):
        op(x, ())
    with pytest.raises(ValueError, match="x must have at least 3 dims"):
        op(jnp.ones((4, 4)), 2)
    with pytest.raises(ValueError, match="layout must be one of"):
        op(x, 2, layout="NHWC")
    with pytest.raises(TypeError, match="x must be an array"):
        op([[1.0]], (1,))
    with pytest.raises(TypeError, match="x must be an array"):
        op([[1.0]], 1)
    with pytest.raises(ValueError, match="x must have non-empty spatial dims"):
        op(jnp.ones((1, 0, 4, 2)), 2)


@pytest.mark.parametrize("op", [cj.global_avg_pool, cj.global_max_pool])
def test_global_errors(op):
    name = op.__name__
    with pytest.raises(ValueError, match=f"{name}: x must have at least 3 dims"):
        op(jnp.ones((4, 4)))
    with pytest.raises(ValueError, match="layout must be one of"):
        op(jnp.ones((1, 4, 4)), layout="nchw")
    with pytest.raises(TypeError, match="keepdims must be a bool, got 1"):
        op(jnp.ones((1, 4, 4)), keepdims=1)
    with pytest.raises(TypeError, match="x must be an array"):
        op([1.0, 2.0])
    with pytest.raises(ValueError, match="x must have non-empty spatial dims"):
        op(jnp.ones((1, 0, 4)))


# ---------------------------------------------------------------------- half precision
# Adaptive and global means of bfloat16/float16 accumulate in float32 and round once
# (every axis of an adaptive pool in float32, not rounded between axes).

HALF_MEANS = [
    (
        "adaptive1d_uneven",
        lambda a: cj.adaptive_avg_pool(a, 4, layout="channels_first"),
        lambda t: F.adaptive_avg_pool1d(t, 4),
        (2, 3, 11),
        True,
    ),
    (
        "adaptive2d_uneven",
        lambda a: cj.adaptive_avg_pool(a, (4, 3), layout="channels_first"),
        lambda t: F.adaptive_avg_pool2d(t, (4, 3)),
        (2, 3, 9, 11),
        True,
    ),
    (
        "adaptive2d_divisible",
        lambda a: cj.adaptive_avg_pool(a, (3, 4), layout="channels_first"),
        lambda t: F.adaptive_avg_pool2d(t, (3, 4)),
        (2, 3, 9, 12),
        True,
    ),
    # PyTorch's adaptive_avg_pool3d adds in the half type: float64 oracle only.
    (
        "adaptive3d",
        lambda a: cj.adaptive_avg_pool(a, 2, layout="channels_first"),
        lambda t: F.adaptive_avg_pool3d(t, 2),
        (2, 3, 5, 6, 7),
        False,
    ),
    (
        "global2d",
        lambda a: cj.global_avg_pool(a, keepdims=True, layout="channels_first"),
        lambda t: F.adaptive_avg_pool2d(t, 1),
        (2, 3, 9, 11),
        True,
    ),
    (
        "global3d",
        lambda a: cj.global_avg_pool(a, layout="channels_first"),
        lambda t: t.mean(dim=(2, 3, 4)),
        (2, 3, 5, 6, 7),
        False,
    ),
]


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize(
    "name,ours,theirs,shape,torch_half", HALF_MEANS, ids=[c[0] for c in HALF_MEANS]
)
def test_half_precision_means_match_torch(rng, dtype, name, ours, theirs, shape, torch_half):
    half_vs_torch(rng, dtype, ours, theirs, shape, torch_half=torch_half)


@pytest.mark.parametrize(
    "op,axes,torch_size",
    [
        (lambda a: cj.global_avg_pool(a, keepdims=True), (1, 2), (1, 1)),
        (lambda a: cj.adaptive_avg_pool(a, 1), (1, 2), (1, 1)),
        (lambda a: cj.adaptive_avg_pool(a, (1, None)), (1,), (1, None)),
    ],
    ids=["global", "adaptive", "adaptive_one_axis"],
)
def test_half_precision_means_of_large_windows(op, axes, torch_size, rng):
    # The inputs: 256x256 bf16 values in [1, 2] (a bf16 sum stalls at 256 times
    # an element), float16 60000s (a float16 sum overflows). PyTorch: 1.5 and 60000.
    x = rng.uniform(1, 2, (1, 256, 256, 1)).astype(jnp.bfloat16)
    y = op(jnp.asarray(x))
    assert y.dtype == jnp.bfloat16
    y = np.asarray(y, np.float64)
    mean = x.astype(np.float64).mean(axis=axes, keepdims=True)
    assert np.all(np.abs(y - mean) <= 0.51 * ulp(mean, jnp.bfloat16))
    xt = torch.tensor(to_cf(x.astype(np.float32))).bfloat16()
    np.testing.assert_array_equal(y, to_cl(F.adaptive_avg_pool2d(xt, torch_size).double().numpy()))
    h = jnp.full((1, 4, 4, 1), 60000, jnp.float16)
    np.testing.assert_array_equal(np.asarray(op(h), np.float64), 60000.0)


@pytest.mark.parametrize("op", [cj.global_avg_pool, cj.global_max_pool])
def test_global_pools_keepdims_takes_numpy_bools_only(op):
    x = jnp.ones((1, 4, 4, 2))
    assert op(x, keepdims=np.True_).shape == op(x, keepdims=True).shape == (1, 1, 1, 2)
    assert op(x, keepdims=np.bool_(False)).shape == (1, 2)
    for bad in ("no", None, 0, np.array(True)):
        with pytest.raises(TypeError, match=f"{op.__name__}: keepdims must be a bool, got"):
            op(x, keepdims=bad)
