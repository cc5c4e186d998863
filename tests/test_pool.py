"""Pooling: the seed examples as named tests, the public surface, every error message."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import cnn_jax as cj


def _cf(rows):
    """A (1, 1, H, W) channels_first array, as the seeds' PyTorch examples use."""
    return jnp.asarray(rows, jnp.float32)[None, None]


def _pool2d_cf(x, window, **kw):
    return np.asarray(cj.max_pool(x, window, layout="channels_first", **kw))[0]


# --------------------------------------------------------------------------- seeds


def test_seed_003_max_pool_2x2_stride_2():
    x = _cf([[1, 3, 2, 4], [5, 6, 7, 8], [9, 2, 3, 1], [4, 0, 1, 5]])
    np.testing.assert_array_equal(_pool2d_cf(x, 2, stride=2)[0], [[6, 8], [9, 5]])


def test_seed_004_pool2d_stride_1_max_and_avg():
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    np.testing.assert_array_equal(cj.max_pool(x, 2, 1)[0, ..., 0], [[4, 5], [7, 8]])
    np.testing.assert_array_equal(cj.avg_pool(x, 2, 1)[0, ..., 0], [[2, 3], [5, 6]])


def test_seed_004_maxpool2d_3_stride_defaults_to_window():
    x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(_pool2d_cf(x, 3)[0], [[10]])


def test_seed_004_maxpool2d_3_padding_1_stride_2():
    x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(_pool2d_cf(x, 3, stride=2, padding=1)[0], [[5, 7], [13, 15]])


def test_seed_004_maxpool2d_2x3_padding_1_1_stride_2_3():
    x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(
        _pool2d_cf(x, (2, 3), stride=(2, 3), padding=(1, 1))[0], [[1, 3], [9, 11], [13, 15]]
    )


def test_seed_004_two_channels_pool_separately():
    x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    x = jnp.concatenate([x, x + 1], axis=1)
    y = _pool2d_cf(x, 3, stride=2, padding=1)
    np.testing.assert_array_equal(y, [[[5, 7], [13, 15]], [[6, 8], [14, 16]]])
    # The same pool in channels_last gives the same numbers.
    y_cl = np.asarray(cj.max_pool(jnp.moveaxis(x, 1, -1), 3, 2, padding=1))[0]
    np.testing.assert_array_equal(np.moveaxis(y_cl, -1, 0), y)


# --------------------------------------------------------------------------- surface


def test_pools_are_public_and_reexported():
    for name in ("max_pool", "min_pool", "avg_pool", "sum_pool", "lp_pool"):
        assert getattr(cj, name) is getattr(cj.ops, name)
        assert name in cj.__all__


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_output_shapes_1d_2d_3d(layout):
    for _n, size in ((1, (10,)), (2, (10, 7)), (3, (6, 7, 5))):
        shape = (2, *size, 3) if layout == "channels_last" else (2, 3, *size)
        x = jnp.zeros(shape)
        out = [(s + 2 - 3) // 2 + 1 for s in size]
        expected = (2, *out, 3) if layout == "channels_last" else (2, 3, *out)
        for pool in (cj.max_pool, cj.min_pool, cj.avg_pool, cj.sum_pool):
            assert pool(x, 3, 2, padding=1, layout=layout).shape == expected
        assert cj.lp_pool(x, 2, 2, layout=layout).shape == (
            (2, *[s // 2 for s in size], 3)
            if layout == "channels_last"
            else (2, 3, *[s // 2 for s in size])
        )


def test_ceil_mode_drops_a_window_that_would_start_in_the_padding():
    # PyTorch: size 5, window 2, stride 2, padding 1, ceil_mode -> 3 windows
    # (starts -1, 1, 3); size 4, window 2, stride 2, ceil_mode -> 2 (start 4 is past).
    assert cj.max_pool(jnp.zeros((1, 5, 1)), 2, 2, padding=1, ceil_mode=True).shape == (1, 3, 1)
    assert cj.max_pool(jnp.zeros((1, 4, 1)), 2, 2, padding=1, ceil_mode=True).shape == (1, 3, 1)
    assert cj.max_pool(jnp.zeros((1, 5, 1)), 2, 2, ceil_mode=True).shape == (1, 3, 1)
    assert cj.max_pool(jnp.zeros((1, 4, 1)), 2, 2, ceil_mode=True).shape == (1, 2, 1)
    assert cj.max_pool(jnp.zeros((1, 5, 1)), 2, 2).shape == (1, 2, 1)


def test_lp_pool_inf_is_max_of_abs():
    x = jnp.asarray([[[-5.0], [1.0], [2.0], [-1.0]]])
    np.testing.assert_array_equal(cj.lp_pool(x, float("inf"), 2)[0, :, 0], [5.0, 2.0])


# --------------------------------------------------------------------------- errors

X = jnp.zeros((1, 6, 6, 2))


@pytest.mark.parametrize("pool", [cj.max_pool, cj.min_pool, cj.avg_pool, cj.sum_pool])
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(window=0), ValueError, r"window must be >= 1"),
        (dict(window=(2, -1)), ValueError, r"window must be >= 1"),
        (dict(window=(2, 2, 2, 2)), ValueError, r"x must have 6 dims .* 4-D window"),
        (dict(window=()), ValueError, r"window must have one entry per spatial dim"),
        (dict(window=2.0), TypeError, r"window must be an int or a tuple of ints"),
        (dict(window=2, stride=0), ValueError, r"stride must be >= 1"),
        (dict(window=2, stride=(1, 2, 3)), ValueError, r"stride must be an int or a tuple of 2"),
        (dict(window=3, padding=2), ValueError, r"padding must be at most half the window"),
        (
            dict(window=(2, 3), padding=(1, 2)),
            ValueError,
            r"padding must be at most half the window",
        ),
        (dict(window=2, padding=-1), ValueError, r"padding must be non-negative"),
        (dict(window=2, padding="causal"), ValueError, r"padding must be .* one of \('valid'"),
        (dict(window=2, padding="bogus"), ValueError, r"padding must be"),
        (
            dict(window=2, padding=((3, 0), (0, 0))),
            ValueError,
            r"padding must leave at least one input element in every window",
        ),
        (
            dict(window=2, padding=((0, 0),)),
            ValueError,
            r"padding as \(low, high\) pairs must have",
        ),
        (dict(window=7), ValueError, r"window \(7, 7\) .* must fit in the padded input"),
        (dict(window=2, layout="NHWC"), ValueError, r"layout must be one of"),
    ],
)
def test_bad_arguments(pool, kwargs, error, match):
    with pytest.raises(error, match=match):
        pool(X, **kwargs)


BOOL_FLAGS = [
    ("max_pool", cj.max_pool, "ceil_mode"),
    ("min_pool", cj.min_pool, "ceil_mode"),
    ("avg_pool", cj.avg_pool, "ceil_mode"),
    ("avg_pool", cj.avg_pool, "count_include_pad"),
    ("sum_pool", cj.sum_pool, "ceil_mode"),
    ("lp_pool", lambda x, w, **kw: cj.lp_pool(x, 2, w, **kw), "ceil_mode"),
]
_FLAG_IDS = [f"{op}-{flag}" for op, _, flag in BOOL_FLAGS]


@pytest.mark.parametrize("op,pool,flag", BOOL_FLAGS, ids=_FLAG_IDS)
@pytest.mark.parametrize(
    "value",
    ["no", "False", 1, 0, None, 1.0, np.array(True), [True]],
    ids=["str_no", "str_False", "int1", "int0", "None", "float", "array", "list"],
)
def test_bool_flags_take_only_bools(op, pool, flag, value):
    # A truthy string used to mean True ("no" included): any non-bool is a TypeError
    # naming the argument and the value.
    with pytest.raises(
        TypeError,
        match=rf"{op}: {flag} must be a bool, got "
        rf"{re.escape(repr(value))}",
    ):
        pool(jnp.zeros((1, 5, 5, 1)), 2, **{flag: value})


@pytest.mark.parametrize("op,pool,flag", BOOL_FLAGS, ids=_FLAG_IDS)
def test_bool_flags_take_numpy_bools(op, pool, flag):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 5, 5, 1)), jnp.float32)
    kw = dict(padding=1) if flag == "count_include_pad" else {}  # where the flag matters
    outs = {}
    for value in (True, False):
        outs[value] = np.asarray(pool(x, 2, **kw, **{flag: np.bool_(value)}))
        np.testing.assert_array_equal(outs[value], np.asarray(pool(x, 2, **kw, **{flag: value})))
    assert outs[True].shape != outs[False].shape or not np.array_equal(outs[True], outs[False])


@pytest.mark.parametrize("pool", [cj.max_pool, cj.min_pool])
def test_bad_dilation(pool):
    with pytest.raises(ValueError, match=r"dilation must be >= 1"):
        pool(X, 2, dilation=0)
    with pytest.raises(ValueError, match=r"window \(3, 3\) \(dilation \(3, 3\)\) must fit"):
        pool(X, 3, 1, dilation=3)


@pytest.mark.parametrize("pool", [cj.max_pool, cj.min_pool])
def test_complex_input_is_rejected(pool):
    with pytest.raises(
        TypeError, match=r"x must be a real \(not complex\) array, got dtype complex64"
    ):
        pool(jnp.zeros((1, 4, 4, 1), jnp.complex64), 2)


def test_rank_errors_name_window():
    with pytest.raises(
        ValueError,
        match=r"x must have 4 dims \(batched\) or 3 \(unbatched\) "
        r"for a 2-D window",
    ):
        cj.max_pool(jnp.zeros((2, 6)), (2, 2))
    with pytest.raises(ValueError, match=r"at least 3 dims .*pass a tuple window"):
        cj.avg_pool(jnp.zeros((6, 2)), 2)
    with pytest.raises(TypeError, match=r"max_pool: x must be an array, got list"):
        cj.max_pool([[1.0, 2.0]], (2,))


def test_avg_pool_bad_divisor_and_dtype():
    with pytest.raises(ValueError, match=r"avg_pool: divisor_override must be >= 1, got 0"):
        cj.avg_pool(X, 2, divisor_override=0)
    with pytest.raises(TypeError, match=r"avg_pool: divisor_override must be an int, got 2.5"):
        cj.avg_pool(X, 2, divisor_override=2.5)
    with pytest.raises(
        TypeError, match=r"avg_pool: x must be a floating-point array .*got dtype int32"
    ):
        cj.avg_pool(jnp.zeros((1, 4, 4, 1), jnp.int32), 2)
    with pytest.raises(
        TypeError,
        match=r"sum_pool: x must be a floating-point or integer "
        r"array .*got dtype bool",
    ):
        cj.sum_pool(jnp.zeros((1, 4, 4, 1), bool), 2)


@pytest.mark.parametrize(
    "p,error,match",
    [
        (0, ValueError, r"lp_pool: p must be a number > 0, got 0"),
        (-2.0, ValueError, r"lp_pool: p must be a number > 0, got -2.0"),
        (float("nan"), ValueError, r"lp_pool: p must be a number > 0, got nan"),
        ("2", TypeError, r"lp_pool: p must be a real number > 0, got '2'"),
        (True, TypeError, r"lp_pool: p must be a real number > 0, got True"),
    ],
)
def test_lp_pool_bad_p(p, error, match):
    with pytest.raises(error, match=match):
        cj.lp_pool(X, p, 2)


def test_lp_pool_bad_window_and_dtype():
    with pytest.raises(ValueError, match=r"lp_pool: window must be >= 1"):
        cj.lp_pool(X, 2, 0)
    with pytest.raises(ValueError, match=r"lp_pool: x must have 6 dims .* 4-D window"):
        cj.lp_pool(X, 2, (2, 2, 2, 2))
    with pytest.raises(TypeError, match=r"lp_pool: x must be a floating-point array"):
        cj.lp_pool(jnp.zeros((1, 4, 4, 1), jnp.int32), 2, 2)


def test_ceil_mode_dilated_window_longer_than_padded_input_matches_torch():
    # Effective window 7 over a padded length of 6: PyTorch's ceil_mode still gives one
    # window (starting in the left padding), whose max is x[2].
    x = np.arange(4.0, dtype=np.float32)[None, None]
    expected = torch.nn.functional.max_pool1d(torch.tensor(x), 3, 2, 1, 3, ceil_mode=True).numpy()
    got = cj.max_pool(
        jnp.asarray(x), (3,), 2, padding=1, dilation=3, ceil_mode=True, layout="channels_first"
    )
    np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize(
    "pool",
    [
        lambda a: cj.max_pool(a, 2),
        lambda a: cj.min_pool(a, 2),
        lambda a: cj.avg_pool(a, 2),
        lambda a: cj.sum_pool(a, 2),
        lambda a: cj.lp_pool(a, 2, 2),
    ],
)
def test_window_pools_are_reverse_mode_only(pool):
    # The custom VJPs (see _pool.py) make forward mode unavailable; JAX says so at
    # trace time with its own message, which this test pins. Reverse mode works.
    x = jnp.arange(16.0).reshape(1, 4, 4, 1) + 1
    with pytest.raises(
        TypeError,
        match=r"can't apply forward-mode autodiff \(jvp\) to a "
        r"custom_vjp function",
    ):
        jax.jvp(pool, (x,), (jnp.ones_like(x),))
    with pytest.raises(TypeError, match=r"can't apply forward-mode autodiff"):
        jax.jacfwd(pool)(x)
    assert jax.grad(lambda a: pool(a).sum())(x).shape == x.shape


@pytest.mark.parametrize("pool", [cj.max_pool, cj.avg_pool])
def test_pools_reject_empty_spatial_dims_like_torch(pool):
    # Found by tests/fuzz.py: padding alone used to invent windows over an empty dim;
    # PyTorch raises ("Expected input's non-batch dimensions to have positive length").
    with pytest.raises(
        ValueError,
        match=r"pool: x must have non-empty spatial dims, got "
        r"x.shape=\(2, 3, 0, 2\)",
    ):
        pool(jnp.ones((2, 3, 0, 2)), 2, padding=1)
