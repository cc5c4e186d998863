"""avg_pool / sum_pool / lp_pool: PyTorch parity (values and gradients), the sum
pool's custom VJP against XLA's own gradient, hand-derived values."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _pool_oracle import (
    HALF_DTYPES,
    TORCH_HALF,
    TORCH_POOLS,
    against_reduce_window,
    grouped_vjps,
    half_vs_torch,
    input_shape,
    random_window,
    torch_value_and_grad,
    ulp,
)
from jax import lax
from jax.test_util import check_grads

import cnn_jax as cj


def _configs(count_per_rank=6, seed=99):
    """Random valid (n, k, s, p, ceil_mode, count_include_pad, divisor, layout): a third
    of them with count_include_pad=False, a third with a divisor_override."""
    rng = np.random.default_rng(seed)
    out = []
    for n, i in itertools.product((1, 2, 3), range(count_per_rank)):
        k, s, _, p, ceil_mode = random_window(rng, n, dilate=False)
        divisor = 5 if i % 3 == 2 else None
        out.append(
            (
                n,
                k,
                s,
                p,
                ceil_mode,
                bool(i % 3),
                divisor,
                ("channels_last", "channels_first")[i % 2],
            )
        )
    return out


CONFIGS = _configs()


def _torch_avg(n):
    """``avg_pool{n}d`` with every argument (avg_pool1d has no divisor_override: it
    runs as a 2-D pool with a height-1 window)."""
    if n > 1:
        return TORCH_POOLS["avg"][n - 1]

    def avg1d(t, k, s, p, ceil_mode, include, divisor):
        return TORCH_POOLS["avg"][1](
            t.unsqueeze(-2), (1, *k), (1, *s), (0, *p), ceil_mode, include, divisor
        ).squeeze(-2)

    return avg1d


def _input(rng, n, layout, batched=True, positive=False):
    x = rng.standard_normal(input_shape(n, layout, batched)).astype(np.float32)
    return np.abs(x) + 0.5 if positive else x


def _run_grouped(rng, cases, batched=True):
    """cases: (name, ours, torch_fn, layout, x). One jit for all values and VJPs."""
    xs = [c[4] for c in cases]
    gs = [
        rng.standard_normal(jax.eval_shape(c[1], x).shape).astype(np.float32)
        for c, x in zip(cases, xs)
    ]
    results = grouped_vjps([c[1] for c in cases], xs, gs)
    for (name, _, torch_fn, layout, x), g, (y, dx) in zip(cases, gs, results):
        y_t, dx_t = torch_value_and_grad(torch_fn, x, g, layout, batched)
        assert y.shape == y_t.shape, name
        np.testing.assert_allclose(y, y_t, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(dx, dx_t, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_avg_and_sum_pool_match_torch(rng, n):
    """avg_pool (count_include_pad, divisor_override, ceil_mode) against
    ``avg_pool{n}d``; sum_pool against ``avg_pool{n}d(..., divisor_override=1)``."""
    cases = []
    for _, k, s, p, cm, inc, div, layout in (c for c in CONFIGS if c[0] == n):
        name = f"{k=} {s=} {p=} ceil_mode={cm} count_include_pad={inc} divisor={div} {layout}"
        torch_avg = _torch_avg(n)
        cases.append(
            (
                "avg " + name,
                lambda a, k=k, s=s, p=p, cm=cm, inc=inc, div=div, layout=layout: cj.avg_pool(
                    a,
                    k,
                    s,
                    padding=p,
                    ceil_mode=cm,
                    count_include_pad=inc,
                    divisor_override=div,
                    layout=layout,
                ),
                lambda t, k=k, s=s, p=p, cm=cm, inc=inc, div=div: torch_avg(
                    t, k, s, p, cm, inc, div
                ),
                layout,
                _input(rng, n, layout),
            )
        )
        if div is None and inc:
            cases.append(
                (
                    "sum " + name,
                    lambda a, k=k, s=s, p=p, cm=cm, layout=layout: cj.sum_pool(
                        a, k, s, padding=p, ceil_mode=cm, layout=layout
                    ),
                    lambda t, k=k, s=s, p=p, cm=cm: torch_avg(t, k, s, p, cm, True, 1),
                    layout,
                    _input(rng, n, layout),
                )
            )
    _run_grouped(rng, cases)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_lp_pool_matches_torch(rng, n):
    """p = 1, 2, 3 and 1.5 on positive inputs (values and gradients), ceil_mode too."""
    cases = []
    for i, (p, ceil_mode) in enumerate([(1, False), (2, True), (3, False), (1.5, True)]):
        layout = ("channels_last", "channels_first")[i % 2]
        k = (3,) * n if i % 2 else (2,) * n
        s = None if i < 2 else (2,) * n
        torch_lp = TORCH_POOLS["lp"][n - 1]
        cases.append(
            (
                f"lp {p=} {k=} {s=} {ceil_mode=} {layout}",
                lambda a, p=p, k=k, s=s, c=ceil_mode, layout=layout: cj.lp_pool(
                    a, p, k, s, ceil_mode=c, layout=layout
                ),
                lambda t, p=p, k=k, s=s, c=ceil_mode: torch_lp(  # lp_pool1d wants ints
                    t, p, k[0] if n == 1 else k, s[0] if n == 1 and s else s, c
                ),
                layout,
                _input(rng, n, layout, positive=True),
            )
        )
    _run_grouped(rng, cases)


def test_lp_pool_signed_inputs_follow_torch_sign_relu(rng):
    # Odd p on mixed signs: PyTorch takes sign(a) * relu(|a|) of the power average,
    # so a negative window sum gives NaN from the fractional power; p = 2 is exact.
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    xt = torch.tensor(np.moveaxis(x, -1, 1).copy())
    for p in (1, 2, 3):
        ours = np.asarray(cj.lp_pool(jnp.asarray(x), p, 2))
        ref = np.moveaxis(torch.nn.functional.lp_pool2d(xt, p, 2).numpy(), 1, -1)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert np.isnan(np.asarray(cj.lp_pool(jnp.asarray(x), 3, 2))).any()


def test_avg_pool_unbatched_matches_torch(rng):
    cases = []
    for n, layout in itertools.product((1, 2, 3), ("channels_last", "channels_first")):
        k, s, p = (3,) * n, (2,) * n, (1,) * n
        torch_avg = TORCH_POOLS["avg"][n - 1]
        cases.append(
            (
                f"{n=} {layout}",
                lambda a, k=k, s=s, p=p, layout=layout: cj.avg_pool(
                    a, k, s, padding=p, ceil_mode=True, count_include_pad=False, layout=layout
                ),
                lambda t, k=k, s=s, p=p, f=torch_avg: f(t, k, s, p, True, False),
                layout,
                _input(rng, n, layout, batched=False),
            )
        )
    _run_grouped(rng, cases, batched=False)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_pairs_padding_matches_torch_on_explicit_padding(rng, count_include_pad):
    # Asymmetric pairs have no PyTorch argument: pad by hand, then divide by the count
    # of padded (True) or real (False) elements, both computed by PyTorch.
    x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    pads, k, s = ((2, 0), (1, 2)), (3, 4), (2, 3)
    ours = np.asarray(
        cj.avg_pool(jnp.asarray(x), k, s, padding=pads, count_include_pad=count_include_pad)
    )
    xt = torch.tensor(np.moveaxis(x, -1, 1).copy())
    flat = tuple(itertools.chain(*reversed(pads)))
    total = torch.nn.functional.avg_pool2d(
        torch.nn.functional.pad(xt, flat), k, s, divisor_override=1
    )
    mask = torch.nn.functional.pad(torch.ones_like(xt), flat, value=float(count_include_pad))
    count = torch.nn.functional.avg_pool2d(mask, k, s, divisor_override=1)
    np.testing.assert_allclose(
        ours, np.moveaxis((total / count).numpy(), 1, -1), rtol=1e-5, atol=1e-6
    )


def test_sum_pool_custom_vjp_equals_xla_gradient(rng):
    x = jnp.asarray(rng.standard_normal((2, 8, 9, 3)).astype(np.float32))
    windows = [(3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 3, 0), (4, 3, 2)]
    for y, y_slow, dx, dx_slow in against_reduce_window(
        x, cj.sum_pool, 0.0, lax.add, windows, jnp.sin
    ):
        np.testing.assert_allclose(y, y_slow, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(dx, dx_slow, rtol=1e-6, atol=1e-6)


def test_avg_pool_hand_derived_values():
    # Ones everywhere: count_include_pad=True divides a 2-element corner window of a
    # 3x3/stride-2/padding-1 pool on a 2x2 input by 9 -> 4/9; False divides by 4 -> 1.
    x = jnp.ones((1, 2, 2, 1))
    np.testing.assert_allclose(cj.avg_pool(x, 3, 2, padding=1)[0, 0, 0, 0], 4 / 9, rtol=1e-6)
    np.testing.assert_allclose(
        cj.avg_pool(x, 3, 2, padding=1, count_include_pad=False)[0, 0, 0, 0], 1.0
    )
    np.testing.assert_allclose(cj.avg_pool(x, 2, divisor_override=3)[0, 0, 0, 0], 4 / 3, rtol=1e-6)
    # Gradient of sum(avg_pool) over non-overlapping windows: 1 / window size each.
    dx = jax.grad(lambda a: jnp.sum(cj.avg_pool(a, 2)))(jnp.ones((1, 4, 4, 1)))
    np.testing.assert_allclose(dx, np.full((1, 4, 4, 1), 0.25))
    # Sum pool of ones with "full" padding counts the overlap: 1, 2, 1 along 1-D.
    np.testing.assert_allclose(
        cj.sum_pool(jnp.ones((1, 2, 1)), 2, 1, padding="full")[0, :, 0], [1.0, 2.0, 1.0]
    )


def test_avg_pool_check_grads_and_vmap(rng):
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 2)).astype(np.float32))
    f = lambda a: cj.avg_pool(a, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)
    check_grads(f, (x,), order=1, modes=["rev"], eps=1e-2)
    per_item = jax.vmap(lambda a: f(a[None])[0])(x)
    np.testing.assert_allclose(per_item, f(x), rtol=1e-6)


def test_large_window_avg_pool_falls_back_to_reduce_window_and_matches_torch(rng):
    x = rng.standard_normal((1, 2, 19, 19)).astype(np.float32)
    g = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    y, vjp = jax.vjp(
        lambda a: cj.avg_pool(a, 9, 5, padding=4, count_include_pad=False, layout="channels_first"),
        jnp.asarray(x),
    )
    (dx,) = vjp(jnp.asarray(g))
    y_t, dx_t = torch_value_and_grad(
        lambda t: torch.nn.functional.avg_pool2d(t, 9, 5, 4, False, False),
        x,
        g,
        "channels_first",
        True,
    )
    np.testing.assert_allclose(y, y_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name,ours,theirs",
    [
        (
            "avg_pool",
            lambda a: cj.avg_pool(a, 3, 2, padding=1, layout="channels_first"),
            lambda t: F.avg_pool2d(t, 3, 2, 1),
        ),
        (
            "min_pool",
            lambda a: cj.min_pool(a, 3, 2, padding=1, layout="channels_first"),
            lambda t: -F.max_pool2d(-t, 3, 2, 1),
        ),
        (
            "adaptive_avg_pool",
            lambda a: cj.adaptive_avg_pool(a, 4, layout="channels_first"),
            lambda t: F.adaptive_avg_pool2d(t, 4),
        ),
        (
            "adaptive_max_pool",
            lambda a: cj.adaptive_max_pool(a, 4, layout="channels_first"),
            lambda t: F.adaptive_max_pool2d(t, 4),
        ),
        (
            "global_avg_pool",
            lambda a: cj.global_avg_pool(a, keepdims=True, layout="channels_first"),
            lambda t: F.adaptive_avg_pool2d(t, 1),
        ),
        (
            "global_max_pool",
            lambda a: cj.global_max_pool(a, keepdims=True, layout="channels_first"),
            lambda t: F.adaptive_max_pool2d(t, 1),
        ),
    ],
)
def test_nan_and_inf_propagate_like_torch(name, ours, theirs, rng):
    x = rng.standard_normal((1, 3, 6, 7)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 2, 3], x[0, 1, 4, 4] = np.inf, -np.inf
    x[0, 2, 0, 0], x[0, 2, 5, 6] = np.inf, np.inf
    y = np.asarray(ours(jnp.asarray(x)))
    y_t = theirs(torch.tensor(x)).numpy()
    # NaN, +inf and -inf in the same places, finite values equal.
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_t))
    np.testing.assert_allclose(y, y_t, rtol=1e-6, equal_nan=True)


# ------------------------------------------------------------------ half precision
# Means and sums of bfloat16/float16 windows accumulate in float32 and round once, as
# PyTorch's CPU kernels do. Oracles: PyTorch in the same dtype (values within one ulp:
# its avg_pool1d/2d round a float32 sum once too; its lp_pool rounds the power, the
# mean and the root separately), and PyTorch in float64 on the same rounded inputs
# (cnn_jax's values and gradients are that result correctly rounded, up to float32's
# own error: within 0.51 ulp). PyTorch's half-precision backward adds in the half
# type, so its gradients are only compared within a few eps of their scale.

_CF = dict(layout="channels_first")
HALF_POOLS = [
    (
        "avg2d_k3s2p1",
        lambda a: cj.avg_pool(a, 3, 2, padding=1, **_CF),
        lambda t: F.avg_pool2d(t, 3, 2, 1),
        (2, 3, 9, 11),
        False,
    ),
    (
        "avg2d_ceil_exclude_pad",
        lambda a: cj.avg_pool(a, 3, 1, padding=1, ceil_mode=True, count_include_pad=False, **_CF),
        lambda t: F.avg_pool2d(t, 3, 1, 1, True, False),
        (2, 3, 9, 11),
        False,
    ),
    (
        "avg2d_divisor",
        lambda a: cj.avg_pool(a, (2, 3), 2, divisor_override=5, **_CF),
        lambda t: F.avg_pool2d(t, (2, 3), 2, divisor_override=5),
        (2, 3, 9, 11),
        False,
    ),
    (
        "avg1d_k4s2",
        lambda a: cj.avg_pool(a, 4, 2, **_CF),
        lambda t: F.avg_pool1d(t, 4, 2),
        (2, 3, 17),
        False,
    ),
    (
        "avg2d_large_window",
        lambda a: cj.avg_pool(a, 9, 5, padding=4, **_CF),  # reduce_window
        lambda t: F.avg_pool2d(t, 9, 5, 4),
        (1, 2, 19, 19),
        False,
    ),
    (
        "sum2d_k3s2",
        lambda a: cj.sum_pool(a, 3, 2, **_CF),
        lambda t: F.avg_pool2d(t, 3, 2, divisor_override=1),
        (2, 3, 9, 11),
        False,
    ),
    (
        "lp2_2d",
        lambda a: cj.lp_pool(a, 2, 3, 2, **_CF),
        lambda t: F.lp_pool2d(t, 2, 3, 2),
        (2, 3, 9, 11),
        True,
    ),
    (
        "lp1.5_2d",
        lambda a: cj.lp_pool(a, 1.5, 2, **_CF),
        lambda t: F.lp_pool2d(t, 1.5, 2),
        (2, 3, 9, 11),
        True,
    ),
    (
        "lp3_1d_ceil",
        lambda a: cj.lp_pool(a, 3, (3,), 2, ceil_mode=True, **_CF),
        lambda t: F.lp_pool1d(t, 3, 3, 2, ceil_mode=True),
        (2, 3, 16),
        True,
    ),
]


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize(
    "name,ours,theirs,shape,positive", HALF_POOLS, ids=[c[0] for c in HALF_POOLS]
)
def test_half_precision_pools_match_torch(rng, dtype, name, ours, theirs, shape, positive):
    half_vs_torch(rng, dtype, ours, theirs, shape, positive)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_half_precision_avg_pool_3d_and_channels_last_round_a_float32_mean_once(rng, dtype):
    # PyTorch's CPU has no half-precision avg_pool3d: the oracle is its float32 result
    # on the same rounded inputs, rounded once (what its 1-D/2-D kernels do).
    x = rng.standard_normal((2, 4, 5, 6, 3)).astype(dtype)
    ours = np.asarray(cj.avg_pool(jnp.asarray(x), 3, 2, padding=1), np.float64)
    xt = torch.tensor(np.moveaxis(x.astype(np.float32), -1, 1).copy())
    ref = F.avg_pool3d(xt, 3, 2, 1).to(TORCH_HALF[jnp.dtype(dtype).name]).double().numpy()
    np.testing.assert_array_equal(ours, np.moveaxis(ref, 1, -1))


def test_bf16_large_window_mean_is_not_stuck_at_256_elements(rng):
    # The reproducer: the mean of a 256x256 bf16 window of values in [1, 2] was
    # 0.0078 (a bf16 sum stops growing at 256 times an element); PyTorch gives 1.5.
    x = rng.uniform(1, 2, (1, 256, 256, 1)).astype(jnp.bfloat16)
    y = cj.avg_pool(jnp.asarray(x), 256)
    xt = torch.tensor(np.moveaxis(x.astype(np.float32), -1, 1).copy()).bfloat16()
    assert y.dtype == jnp.bfloat16
    assert float(y[0, 0, 0, 0]) == float(F.avg_pool2d(xt, 256)[0, 0, 0, 0])
    mean = x.astype(np.float64).mean()
    assert abs(float(y[0, 0, 0, 0]) - mean) <= 0.51 * ulp(mean, jnp.bfloat16)
    # The gradient of the mean: 1 / 65536 everywhere, exact in bf16.
    dx = jax.grad(lambda a: cj.avg_pool(a, 256).astype(jnp.float32).sum())(jnp.asarray(x))
    assert dx.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(dx, np.float64), np.full(x.shape, 2.0**-16))


def test_fp16_sums_past_65504_do_not_overflow_before_the_division():
    # 60000s average to 60000 (the float16 sum was inf); PyTorch agrees.
    x = np.full((1, 1, 4, 4), 60000, np.float16)
    y = cj.avg_pool(jnp.asarray(x), 2, layout="channels_first")
    np.testing.assert_array_equal(np.asarray(y), F.avg_pool2d(torch.tensor(x), 2).numpy())
    np.testing.assert_array_equal(np.asarray(y), np.full((1, 1, 2, 2), 60000, np.float16))
    # A window sum that only fits once it is complete (each term exact in float16):
    # 60000 + 60000 - 60000 - 40000.
    w = np.array([[[[60000, 60000], [-60000, -40000]]]], np.float16)
    s = cj.sum_pool(jnp.asarray(w), 2, layout="channels_first")
    assert s.dtype == jnp.float16 and float(s[0, 0, 0, 0]) == 20000.0
    assert float(F.avg_pool2d(torch.tensor(w), 2, divisor_override=1)[0, 0, 0, 0]) == 20000.0
    # A sum that does not fit float16 is inf, as it must be.
    assert np.isinf(float(cj.sum_pool(jnp.asarray(x), 2, layout="channels_first")[0, 0, 0, 0]))


def test_fp16_lp_pool_powers_do_not_overflow_before_the_root():
    # sqrt(4 * 200**2) = 400: the float16 power sum (160000) overflows, the result does
    # not. cnn_jax computes the chain in float32 and rounds once; PyTorch rounds each
    # step to float16 and returns inf here (a documented difference, tests/README.md).
    x = jnp.full((1, 2, 2, 1), 200, jnp.float16)
    y = cj.lp_pool(x, 2, 2)
    assert y.dtype == jnp.float16 and float(y[0, 0, 0, 0]) == 400.0
    assert np.isinf(
        float(F.lp_pool2d(torch.full((1, 1, 2, 2), 200, dtype=torch.float16), 2, 2)[0, 0, 0, 0])
    )
