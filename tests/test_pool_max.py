"""max_pool / min_pool: PyTorch parity (values, gradients, tie-breaking), the custom VJP
against XLA's own gradient, hand-derived properties, transformations."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _pool_oracle import (
    TORCH_POOLS,
    against_reduce_window,
    grouped_vjps,
    input_shape,
    jax_value_and_grad,
    random_window,
    torch_value_and_grad,
)
from jax import lax
from jax.test_util import check_grads

import cnn_jax as cj


def _max_configs(count_per_rank=8, seed=1234):
    """Random valid (n, k, s, p, d, ceil_mode, layout, ties) configurations; ties (a tiny
    integer range of values) in half of them."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (1, 2, 3):
        for i in range(count_per_rank):
            k, s, d, p, ceil_mode = random_window(rng, n, dilate=True)
            out.append(
                (n, k, s, p, d, ceil_mode, ("channels_last", "channels_first")[i % 2], i % 4 < 2)
            )
    return out


CONFIGS = _max_configs()


def _input(rng, n, layout, ties, batched=True):
    shape = input_shape(n, layout, batched)
    if ties:  # tiny integer range: many equal values per window
        return rng.integers(0, 3, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_max_and_min_pool_match_torch(rng, n):
    """Values and gradients of every random configuration of rank ``n`` (half of them
    tie-heavy), max_pool against ``max_pool{n}d`` and min_pool against
    ``-max_pool{n}d(-x)``."""
    cases = []
    for i, (_, k, s, p, d, ceil_mode, layout, ties) in enumerate(c for c in CONFIGS if c[0] == n):
        kw = dict(padding=p, dilation=d, ceil_mode=ceil_mode, layout=layout)
        max_t = lambda t, k=k, s=s, p=p, d=d, c=ceil_mode: TORCH_POOLS["max"][n - 1](
            t, k, s, p, d, c
        )
        cases.append(
            (
                f"max {k=} {s=} {p=} {d=} {ceil_mode=} {layout}",
                lambda a, k=k, s=s, kw=kw: cj.max_pool(a, k, s, **kw),
                max_t,
                layout,
                ties,
            )
        )
        if i % 2 == 0:
            min_t = lambda t, f=max_t: -f(-t)
            cases.append(
                (
                    f"min {k=} {s=} {p=} {d=} {ceil_mode=} {layout}",
                    lambda a, k=k, s=s, kw=kw: cj.min_pool(a, k, s, **kw),
                    min_t,
                    layout,
                    ties,
                )
            )
    xs = [_input(rng, n, layout, ties) for _, _, _, layout, _ in cases]
    ys_shape = [jax.eval_shape(f, x).shape for (_, f, _, _, _), x in zip(cases, xs)]
    gs = [rng.standard_normal(shape).astype(np.float32) for shape in ys_shape]
    results = grouped_vjps([c[1] for c in cases], xs, gs)
    for (name, _, torch_fn, layout, _), x, g, (y, dx) in zip(cases, xs, gs, results):
        y_t, dx_t = torch_value_and_grad(torch_fn, x, g, layout, True)
        np.testing.assert_array_equal(y, y_t, err_msg=name)
        np.testing.assert_allclose(dx, dx_t, rtol=1e-6, atol=1e-6, err_msg=name)


def test_max_pool_unbatched_matches_torch(rng):
    cases = []
    for n, layout in [(1, "channels_first"), (2, "channels_last"), (3, "channels_first")]:
        k, s, p = (3,) * n, (2,) * n, (1,) * n
        cases.append(
            (
                n,
                layout,
                lambda a, k=k, s=s, p=p, layout=layout: cj.max_pool(
                    a, k, s, padding=p, layout=layout
                ),
                lambda t, n=n, k=k, s=s, p=p: TORCH_POOLS["max"][n - 1](t, k, s, p),
            )
        )
    xs = [_input(rng, n, layout, ties=True, batched=False) for n, layout, _, _ in cases]
    gs = [
        rng.standard_normal(jax.eval_shape(c[2], x).shape).astype(np.float32)
        for c, x in zip(cases, xs)
    ]
    results = grouped_vjps([c[2] for c in cases], xs, gs)
    for (n, layout, _, torch_fn), x, g, (y, dx) in zip(cases, xs, gs, results):
        y_t, dx_t = torch_value_and_grad(torch_fn, x, g, layout, False)
        assert y.shape == y_t.shape, (n, layout)
        np.testing.assert_array_equal(y, y_t, err_msg=f"{n=} {layout}")
        np.testing.assert_allclose(dx, dx_t, rtol=1e-6, atol=1e-6, err_msg=f"{n=} {layout}")


def test_max_pool_all_equal_window_gradient_goes_to_first_tap(rng):
    # Every window holds the same value: PyTorch sends each window's gradient to its
    # first element in row-major order, which is the window's top-left corner.
    x = np.ones((1, 4, 4, 1), np.float32)
    dx = jax.grad(lambda a: jnp.sum(cj.max_pool(a, 2)))(jnp.asarray(x))
    expected = np.zeros((4, 4), np.float32)
    expected[::2, ::2] = 1.0
    np.testing.assert_array_equal(np.asarray(dx)[0, ..., 0], expected)


def test_max_pool_padding_never_wins_even_against_minus_inf():
    # Real -inf values must beat the implicit -inf padding (PyTorch: the first real tap).
    x = jnp.full((1, 3, 3, 1), -jnp.inf)
    y, vjp = jax.vjp(lambda a: cj.max_pool(a, 3, 2, padding=1), x)
    (dx,) = vjp(jnp.ones_like(y))
    import torch

    xt = torch.full((1, 1, 3, 3), -float("inf"), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    yt.sum().backward()
    np.testing.assert_array_equal(np.asarray(y)[0, ..., 0], yt.detach().numpy()[0, 0])
    np.testing.assert_array_equal(np.asarray(dx)[0, ..., 0], xt.grad.numpy()[0, 0])


def test_dilated_window_entirely_in_the_padding_is_minus_inf_like_torch():
    # Height 1, window 2, dilation 2, padding 1: the taps land at -1 and 1, both
    # padding. PyTorch returns -inf there; no input element receives a gradient.
    import torch

    x = jnp.ones((1, 1, 5, 2))
    y, vjp = jax.vjp(lambda a: cj.max_pool(a, 2, (2, 1), padding=1, dilation=2), x)
    ref = torch.nn.functional.max_pool2d(torch.ones(1, 2, 1, 5), 2, (2, 1), 1, 2)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(y), -1, 1), ref.numpy())
    assert np.isneginf(np.asarray(y)).all()
    np.testing.assert_array_equal(vjp(jnp.ones_like(y))[0], np.zeros((1, 1, 5, 2)))


def test_max_pool_nan_propagates_like_torch(rng):
    x = rng.integers(0, 3, (1, 6, 6, 2)).astype(np.float32)
    x[0, 1, 1, 0] = np.nan
    x[0, 1, 2, 0] = np.nan  # two NaNs in one window: PyTorch's scan keeps the last
    x[0, 4, 3, 1] = np.nan
    ours = lambda a: cj.max_pool(a, 3, 2, padding=1)
    y, dx, g = jax_value_and_grad(ours, x, lambda shape: rng.standard_normal(shape))
    torch_fn = lambda t: TORCH_POOLS["max"][1](t, 3, 2, 1)
    y_t, dx_t = torch_value_and_grad(torch_fn, x, g.astype(np.float32), "channels_last", True)
    np.testing.assert_array_equal(y, y_t)  # NaNs in the same places
    np.testing.assert_allclose(dx, dx_t, rtol=1e-6, atol=1e-6)
    # +inf and -inf without NaN (sum(y) is NaN: the NaN-aware pass runs, still exact).
    x = rng.integers(0, 3, (1, 6, 6, 2)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 5, 5, 1], x[0, 2, 2, 0] = np.inf, -np.inf, np.inf
    y, dx, g = jax_value_and_grad(ours, x, lambda shape: rng.standard_normal(shape))
    y_t, dx_t = torch_value_and_grad(torch_fn, x, g.astype(np.float32), "channels_last", True)
    np.testing.assert_array_equal(y, y_t)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-6, atol=1e-6)


def test_max_pool_custom_vjp_equals_xla_gradient(rng):
    # Distinct values (no ties), so XLA's select_and_scatter has one answer too.
    x = jnp.asarray(rng.permutation(2 * 8 * 9 * 3).reshape(2, 8, 9, 3).astype(np.float32))
    windows = [(3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 3, 0)]
    for y, y_slow, dx, dx_slow in against_reduce_window(
        x, cj.max_pool, -jnp.inf, lax.max, windows, jnp.cos
    ):
        np.testing.assert_array_equal(y, y_slow)
        np.testing.assert_allclose(dx, dx_slow, rtol=1e-6, atol=1e-6)


def test_dilated_max_pool_has_a_gradient_where_xla_has_none(rng):
    x = jnp.asarray(rng.standard_normal((1, 9, 9, 2)).astype(np.float32))

    def plain(a):
        return lax.reduce_window(
            a, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "VALID", window_dilation=(1, 2, 2, 1)
        )

    with pytest.raises(NotImplementedError):
        jax.grad(lambda a: jnp.sum(plain(a)))(x)
    dx = jax.grad(lambda a: jnp.sum(cj.max_pool(a, 3, 1, dilation=2)))(x)
    # Each of the 5 * 5 windows of both channels sends 1 to exactly one input element.
    assert float(jnp.sum(dx)) == 5 * 5 * 2


def test_max_pool_gradient_sums_to_number_of_outputs(rng):
    # Hand-derived: d sum(y) / dx is one 1 per output element, so the total is y.size,
    # and every entry is a whole number of windows.
    x = jnp.asarray(rng.integers(0, 2, (2, 7, 8, 3)).astype(np.float32))
    configs = [(3, 2, 1, 1, False), (3, 1, 0, 2, False), (3, 3, 1, 1, True)]

    def grads(x):
        return [
            jax.grad(lambda a: jnp.sum(cj.max_pool(a, k, s, padding=p, dilation=d, ceil_mode=c)))(x)
            for k, s, p, d, c in configs
        ]

    for (k, s, p, d, c), dx in zip(configs, jax.jit(grads)(x)):
        size = cj.max_pool(x, k, s, padding=p, dilation=d, ceil_mode=c).size
        assert float(jnp.sum(dx)) == size
        assert np.array_equal(np.asarray(dx), np.round(np.asarray(dx)))


def test_max_pool_integer_input_matches_numpy():
    x = np.arange(2 * 5 * 6 * 1, dtype=np.int32).reshape(2, 5, 6, 1) % 7
    y = cj.max_pool(jnp.asarray(x), 2)
    expected = x[:, :4, :6].reshape(2, 2, 2, 3, 2, 1).max(axis=(2, 4))
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(
        cj.min_pool(jnp.asarray(x), 2), x[:, :4, :6].reshape(2, 2, 2, 3, 2, 1).min(axis=(2, 4))
    )


def test_max_pool_jit_vmap_grad_compose(rng):
    x = jnp.asarray(rng.standard_normal((2, 1, 6, 6, 2)).astype(np.float32))
    f = lambda a: jnp.sum(cj.max_pool(a, 3, 2, padding=1) ** 2)
    per_item = jax.jit(jax.vmap(jax.grad(f)))(x)
    looped = jnp.stack([jax.grad(f)(a) for a in x])
    np.testing.assert_allclose(per_item, looped, rtol=1e-6)
    # Unbatched input with a tuple window equals the batched call.
    np.testing.assert_array_equal(
        cj.max_pool(x[0, 0], (3, 3), 2, padding=1), cj.max_pool(x[0], 3, 2, padding=1)[0]
    )


def test_max_pool_bfloat16_keeps_dtype_and_differentiates():
    x = jnp.arange(16, dtype=jnp.bfloat16).reshape(1, 4, 4, 1)
    y = cj.max_pool(x, 2)
    dx = jax.grad(lambda a: jnp.sum(cj.max_pool(a, 2).astype(jnp.float32)))(x)
    assert y.dtype == jnp.bfloat16 and dx.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32)[0, ..., 0], [[5, 7], [13, 15]])
    assert float(jnp.sum(dx.astype(jnp.float32))) == 4.0


@pytest.mark.parametrize("padding", [((1, 0), (0, 2)), "same", "full"])
def test_max_pool_pairs_and_strings_match_explicitly_padded_torch(rng, padding):
    import torch

    x = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    k, s = (3, 2), (2, 2)
    pads = {"same": ((1, 1), (0, 1)), "full": ((2, 2), (1, 1))}.get(padding, padding)
    ours = lambda a: cj.max_pool(a, k, s, padding=padding)
    y, dx, g = jax_value_and_grad(ours, x, lambda shape: rng.standard_normal(shape))

    def torch_fn(t):  # pad with -inf by hand (F.pad takes the last dim first)
        flat = tuple(itertools.chain(*reversed(pads)))
        return torch.nn.functional.max_pool2d(
            torch.nn.functional.pad(t, flat, value=-float("inf")), k, s
        )

    y_t, dx_t = torch_value_and_grad(torch_fn, x, g.astype(np.float32), "channels_last", True)
    np.testing.assert_array_equal(y, y_t)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-6, atol=1e-6)


def test_max_pool_check_grads_rev(rng):
    x = jnp.asarray(rng.permutation(2 * 6 * 6 * 2).reshape(2, 6, 6, 2).astype(np.float32))
    check_grads(
        lambda a: cj.max_pool(a, 3, 2, padding=1, dilation=1),
        (x,),
        order=1,
        modes=["rev"],
        eps=1e-2,
    )


def test_large_windows_fall_back_to_reduce_window_and_match_torch(rng):
    # 9x9 = 81 taps: more than the strided-slice path takes; XLA's reduce_window and
    # its gradient run instead, and dilated windows keep our VJP (XLA has none).
    x = rng.standard_normal((1, 2, 19, 19)).astype(np.float32)
    for kw in (dict(stride=5, padding=4), dict(stride=1, dilation=2)):
        ours = jax.jit(lambda a: cj.max_pool(a, 9, layout="channels_first", **kw))
        y, dx, g = jax_value_and_grad(ours, x, lambda shape: rng.standard_normal(shape))
        torch_fn = lambda t: TORCH_POOLS["max"][1](
            t, 9, kw["stride"], kw.get("padding", 0), kw.get("dilation", 1)
        )
        y_t, dx_t = torch_value_and_grad(torch_fn, x, g.astype(np.float32), "channels_first", True)
        np.testing.assert_array_equal(y, y_t, err_msg=str(kw))
        np.testing.assert_allclose(dx, dx_t, rtol=1e-6, atol=1e-6, err_msg=str(kw))
