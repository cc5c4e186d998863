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
from jax import lax
from jax.test_util import check_grads

import cnn_jax as cj
from _pool_oracle import (TORCH_POOLS, against_reduce_window, grouped_vjps, input_shape,
                          random_window, torch_value_and_grad)


def _configs(count_per_rank=6, seed=99):
    """Random valid (n, k, s, p, ceil_mode, count_include_pad, divisor, layout): a third
    of them with count_include_pad=False, a third with a divisor_override."""
    rng = np.random.default_rng(seed)
    out = []
    for n, i in itertools.product((1, 2, 3), range(count_per_rank)):
        k, s, _, p, ceil_mode = random_window(rng, n, dilate=False)
        divisor = 5 if i % 3 == 2 else None
        out.append((n, k, s, p, ceil_mode, bool(i % 3), divisor,
                    ("channels_last", "channels_first")[i % 2]))
    return out


CONFIGS = _configs()


def _torch_avg(n):
    """``avg_pool{n}d`` with every argument (avg_pool1d has no divisor_override: it
    runs as a 2-D pool with a height-1 window)."""
    if n > 1:
        return TORCH_POOLS["avg"][n - 1]

    def avg1d(t, k, s, p, ceil_mode, include, divisor):
        return TORCH_POOLS["avg"][1](t.unsqueeze(-2), (1, *k), (1, *s), (0, *p), ceil_mode,
                                     include, divisor).squeeze(-2)

    return avg1d


def _input(rng, n, layout, batched=True, positive=False):
    x = rng.standard_normal(input_shape(n, layout, batched)).astype(np.float32)
    return np.abs(x) + 0.5 if positive else x


def _run_grouped(rng, cases, batched=True):
    """cases: (name, ours, torch_fn, layout, x). One jit for all values and VJPs."""
    xs = [c[4] for c in cases]
    gs = [rng.standard_normal(jax.eval_shape(c[1], x).shape).astype(np.float32)
          for c, x in zip(cases, xs)]
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
        cases.append((
            "avg " + name,
            lambda a, k=k, s=s, p=p, cm=cm, inc=inc, div=div, layout=layout: cj.avg_pool(
                a, k, s, padding=p, ceil_mode=cm, count_include_pad=inc,
                divisor_override=div, layout=layout),
            lambda t, k=k, s=s, p=p, cm=cm, inc=inc, div=div: torch_avg(t, k, s, p, cm, inc, div),
            layout, _input(rng, n, layout)))
        if div is None and inc:
            cases.append((
                "sum " + name,
                lambda a, k=k, s=s, p=p, cm=cm, layout=layout: cj.sum_pool(
                    a, k, s, padding=p, ceil_mode=cm, layout=layout),
                lambda t, k=k, s=s, p=p, cm=cm: torch_avg(t, k, s, p, cm, True, 1),
                layout, _input(rng, n, layout)))
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
        cases.append((
            f"lp {p=} {k=} {s=} {ceil_mode=} {layout}",
            lambda a, p=p, k=k, s=s, c=ceil_mode, layout=layout: cj.lp_pool(
                a, p, k, s, ceil_mode=c, layout=layout),
            lambda t, p=p, k=k, s=s, c=ceil_mode: torch_lp(  # lp_pool1d wants ints
                t, p, k[0] if n == 1 else k, s[0] if n == 1 and s else s, c),
            layout, _input(rng, n, layout, positive=True)))
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
        cases.append((f"{n=} {layout}",
                      lambda a, k=k, s=s, p=p, layout=layout: cj.avg_pool(
                          a, k, s, padding=p, ceil_mode=True, count_include_pad=False,
                          layout=layout),
                      lambda t, k=k, s=s, p=p, f=torch_avg: f(t, k, s, p, True, False),
                      layout, _input(rng, n, layout, batched=False)))
    _run_grouped(rng, cases, batched=False)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_pairs_padding_matches_torch_on_explicit_padding(rng, count_include_pad):
    # Asymmetric pairs have no PyTorch argument: pad by hand, then divide by the count
    # of padded (True) or real (False) elements, both computed by PyTorch.
    x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    pads, k, s = ((2, 0), (1, 2)), (3, 4), (2, 3)
    ours = np.asarray(cj.avg_pool(jnp.asarray(x), k, s, padding=pads,
                                  count_include_pad=count_include_pad))
    xt = torch.tensor(np.moveaxis(x, -1, 1).copy())
    flat = tuple(itertools.chain(*reversed(pads)))
    total = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(xt, flat), k, s,
                                           divisor_override=1)
    mask = torch.nn.functional.pad(torch.ones_like(xt), flat, value=float(count_include_pad))
    count = torch.nn.functional.avg_pool2d(mask, k, s, divisor_override=1)
    np.testing.assert_allclose(ours, np.moveaxis((total / count).numpy(), 1, -1),
                               rtol=1e-5, atol=1e-6)


def test_sum_pool_custom_vjp_equals_xla_gradient(rng):
    x = jnp.asarray(rng.standard_normal((2, 8, 9, 3)).astype(np.float32))
    windows = [(3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 3, 0), (4, 3, 2)]
    for y, y_slow, dx, dx_slow in against_reduce_window(x, cj.sum_pool, 0.0, lax.add, windows,
                                                        jnp.sin):
        np.testing.assert_allclose(y, y_slow, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(dx, dx_slow, rtol=1e-6, atol=1e-6)


def test_avg_pool_hand_derived_values():
    # Ones everywhere: count_include_pad=True divides a 2-element corner window of a
    # 3x3/stride-2/padding-1 pool on a 2x2 input by 9 -> 4/9; False divides by 4 -> 1.
    x = jnp.ones((1, 2, 2, 1))
    np.testing.assert_allclose(cj.avg_pool(x, 3, 2, padding=1)[0, 0, 0, 0], 4 / 9, rtol=1e-6)
    np.testing.assert_allclose(
        cj.avg_pool(x, 3, 2, padding=1, count_include_pad=False)[0, 0, 0, 0], 1.0)
    np.testing.assert_allclose(cj.avg_pool(x, 2, divisor_override=3)[0, 0, 0, 0], 4 / 3,
                               rtol=1e-6)
    # Gradient of sum(avg_pool) over non-overlapping windows: 1 / window size each.
    dx = jax.grad(lambda a: jnp.sum(cj.avg_pool(a, 2)))(jnp.ones((1, 4, 4, 1)))
    np.testing.assert_allclose(dx, np.full((1, 4, 4, 1), 0.25))
    # Sum pool of ones with "full" padding counts the overlap: 1, 2, 1 along 1-D.
    np.testing.assert_allclose(cj.sum_pool(jnp.ones((1, 2, 1)), 2, 1, padding="full")[0, :, 0],
                               [1.0, 2.0, 1.0])


def test_avg_pool_check_grads_and_vmap(rng):
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 2)).astype(np.float32))
    f = lambda a: cj.avg_pool(a, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)
    check_grads(f, (x,), order=1, modes=["rev"], eps=1e-2)
    per_item = jax.vmap(lambda a: f(a[None])[0])(x)
    np.testing.assert_allclose(per_item, f(x), rtol=1e-6)


def test_large_window_avg_pool_falls_back_to_reduce_window_and_matches_torch(rng):
    x = rng.standard_normal((1, 2, 19, 19)).astype(np.float32)
    g = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    y, vjp = jax.vjp(lambda a: cj.avg_pool(a, 9, 5, padding=4, count_include_pad=False,
                                           layout="channels_first"), jnp.asarray(x))
    (dx,) = vjp(jnp.asarray(g))
    y_t, dx_t = torch_value_and_grad(
        lambda t: torch.nn.functional.avg_pool2d(t, 9, 5, 4, False, False), x, g,
        "channels_first", True)
    np.testing.assert_allclose(y, y_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,ours,theirs", [
    ("avg_pool", lambda a: cj.avg_pool(a, 3, 2, padding=1, layout="channels_first"),
     lambda t: F.avg_pool2d(t, 3, 2, 1)),
    ("min_pool", lambda a: cj.min_pool(a, 3, 2, padding=1, layout="channels_first"),
     lambda t: -F.max_pool2d(-t, 3, 2, 1)),
    ("adaptive_avg_pool", lambda a: cj.adaptive_avg_pool(a, 4, layout="channels_first"),
     lambda t: F.adaptive_avg_pool2d(t, 4)),
    ("adaptive_max_pool", lambda a: cj.adaptive_max_pool(a, 4, layout="channels_first"),
     lambda t: F.adaptive_max_pool2d(t, 4)),
    ("global_avg_pool", lambda a: cj.global_avg_pool(a, keepdims=True, layout="channels_first"),
     lambda t: F.adaptive_avg_pool2d(t, 1)),
    ("global_max_pool", lambda a: cj.global_max_pool(a, keepdims=True, layout="channels_first"),
     lambda t: F.adaptive_max_pool2d(t, 1)),
])
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
