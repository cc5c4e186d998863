"""upsample, pixel (un)shuffle, unfold and fold: PyTorch parity, numpy loops, errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _layout import to_cf, to_cl, torch_value_and_grad

import cnn_jax as cj

LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def both_layouts(op, x, g, cl_out=to_cl, cf_out=to_cf):
    """``op(layout)`` applied in both layouts, values and VJPs, in one compile.

    Results come back in channels_first; ``cl_out``/``cf_out`` move an array between the
    layouts (axis 1 <-> last by default).
    """

    @jax.jit
    def run(a, ct):
        y_cf, vjp_cf = jax.vjp(op("channels_first"), a)
        y_cl, vjp_cl = jax.vjp(op("channels_last"), jnp.moveaxis(a, 1, -1))
        return y_cf, vjp_cf(ct)[0], y_cl, vjp_cl(cl_out(ct))[0]

    y_cf, dx_cf, y_cl, dx_cl = (np.asarray(v) for v in run(jnp.asarray(x), jnp.asarray(g)))
    return y_cf, dx_cf, cf_out(y_cl), to_cf(dx_cl)


def assert_close(a, b, err=""):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(err))


# ---------------------------------------------------------------------------- upsample


def test_seed_000_nearest_upsample_repeats():
    # Seed 000: Upsample(scale_factor=(1, 2)) of [[0, 0, 0, -1, -1]] repeats each value.
    f = jnp.array([0.0, 0.0, 0.0, -1.0, -1.0])
    expect = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0]
    y = cj.upsample(f.reshape(1, 1, 1, 5), (1, 2), layout="channels_first")
    np.testing.assert_array_equal(np.asarray(y).ravel(), expect)
    assert y.shape == (1, 1, 1, 10)
    y = cj.upsample(f.reshape(1, 5, 1), 2)  # 1-D, channels_last
    np.testing.assert_array_equal(np.asarray(y).ravel(), expect)
    np.testing.assert_array_equal(np.asarray(y).ravel(), np.repeat(np.asarray(f), 2))


UPSAMPLE_CASES = [
    dict(scale_factor=2, method="nearest"),
    dict(scale_factor=0.6, method="nearest"),
    dict(scale_factor=1.7, method="nearest"),
    dict(size=(7, 3, 5), method="nearest"),
    dict(scale_factor=(2.5, 1, 0.5), method="linear"),
    dict(scale_factor=2, method="linear", align_corners=True),
    dict(size=(7, 3, 5), method="linear", align_corners=True),
    dict(size=(2, 6, 1), method="linear"),
    dict(scale_factor=1.3, method="linear"),
]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_upsample_matches_torch(n):
    x = np.random.default_rng(n).standard_normal((2, 3) + (5, 4, 3)[:n]).astype(np.float32)
    configs, expected, cotangents = [], [], []
    for i, case in enumerate(UPSAMPLE_CASES):
        case = dict(case)
        if "size" in case:
            case["size"] = case["size"][:n]
        if isinstance(case.get("scale_factor"), tuple):
            case["scale_factor"] = case["scale_factor"][:n]
        method = case.pop("method")
        align = case.pop("align_corners", False)
        mode = "nearest" if method == "nearest" else LINEAR_MODE[n]
        ty, tg, g = torch_value_and_grad(
            lambda t: F.interpolate(
                t, mode=mode, align_corners=align if method == "linear" else None, **case
            ),
            x,
            i,
        )
        configs.append((case.get("scale_factor"), case.get("size"), method, align))
        expected.append((ty, tg))
        cotangents.append(g)

    # 2-D runs every config in both layouts; 1-D and 3-D alternate the layout per
    # config (the layout code is rank-generic) to keep compiles few.
    layouts = [
        ("channels_first", "channels_last")
        if n == 2
        else (("channels_first",) if i % 2 else ("channels_last",))
        for i in range(len(configs))
    ]

    @jax.jit
    def run(a, cts):
        # Every config in one compile.
        out = []
        for (scale, size, method, align), ct, lays in zip(configs, cts, layouts):
            for layout in lays:
                cl = layout == "channels_last"
                xin = jnp.moveaxis(a, 1, -1) if cl else a
                c = jnp.moveaxis(ct, 1, -1) if cl else ct
                y, vjp = jax.vjp(
                    lambda b: cj.upsample(
                        b, scale, size=size, method=method, align_corners=align, layout=layout
                    ),
                    xin,
                )
                out.append((y, vjp(c)[0]))
        return out

    results = iter(run(jnp.asarray(x), [jnp.asarray(g) for g in cotangents]))
    for config, (ty, tg), lays in zip(configs, expected, layouts):
        for layout in lays:
            move = to_cf if layout == "channels_last" else (lambda v: v)
            y, dx = (move(np.asarray(v)) for v in next(results))
            assert y.shape == ty.shape, (n, config, layout)
            assert_close(y, ty, (n, config, layout))
            assert_close(dx, tg, (n, config, layout))


def test_upsample_nearest_non_integer_scale_index_rule():
    # PyTorch (recompute_scale_factor=None): out = floor(10 * 1.05) = 10, and the
    # source of output i is floor(i / 1.05), so it is not the identity.
    x = jnp.arange(10.0).reshape(1, 10, 1)
    y = np.asarray(cj.upsample(x, 1.05)).ravel()
    np.testing.assert_array_equal(y, [math.floor(i / 1.05) for i in range(10)])
    # With size the ratio is in / out: 10 -> 4 reads 0, 2, 5, 7.
    y = np.asarray(cj.upsample(x, size=4)).ravel()
    np.testing.assert_array_equal(y, [0, 2, 5, 7])


def test_upsample_linear_hand_values():
    x = jnp.array([0.0, 4.0]).reshape(1, 2, 1)
    # align_corners=False, x2: coordinates (i + 0.5) / 2 - 0.5 = -0.25 (clamped), 0.25, 0.75, 1.25.
    np.testing.assert_allclose(np.asarray(cj.upsample(x, 2, method="linear")).ravel(), [0, 1, 3, 4])
    # align_corners=True, size 5: coordinates 0, 0.25, ..., 1.
    np.testing.assert_allclose(
        np.asarray(cj.upsample(x, size=5, method="linear", align_corners=True)).ravel(),
        [0, 1, 2, 3, 4],
    )


def test_upsample_jit_vmap_and_dtype(rng):
    x = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)

    @jax.jit
    def run(x):
        direct = cj.upsample(x, 2, method="linear")
        mapped = jax.vmap(lambda a: cj.upsample(a[None], 2, method="linear")[0])(x)
        return direct, mapped

    direct, mapped = run(x)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(direct), rtol=1e-6)
    assert cj.upsample(jnp.ones((1, 3, 3, 1), jnp.bfloat16), 2).dtype == jnp.bfloat16
    ints = jnp.arange(6, dtype=jnp.int32).reshape(1, 6, 1)
    np.testing.assert_array_equal(
        np.asarray(cj.upsample(ints, 2)).ravel(), np.repeat(np.arange(6), 2)
    )


def test_upsample_linear_bfloat16_rounds_once_like_torch(rng):
    x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    ty = F.interpolate(torch.tensor(x).to(torch.bfloat16), scale_factor=1.7, mode="bilinear")
    y = cj.upsample(jnp.asarray(x, jnp.bfloat16), 1.7, method="linear", layout="channels_first")
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y.astype(jnp.float32)), ty.float().numpy())


def test_upsample_errors():
    x = jnp.ones((1, 4, 4, 2))
    with pytest.raises(
        ValueError, match="upsample: exactly one of scale_factor and size must be given"
    ):
        cj.upsample(x)
    with pytest.raises(ValueError, match="exactly one of scale_factor and size.*size=8"):
        cj.upsample(x, 2, size=8)
    with pytest.raises(
        ValueError, match="method must be one of \\('nearest', 'linear'\\), got 'cubic'"
    ):
        cj.upsample(x, 2, method="cubic")
    with pytest.raises(ValueError, match="align_corners must be False for method='nearest'"):
        cj.upsample(x, 2, align_corners=True)
    with pytest.raises(TypeError, match="align_corners must be a bool, got 1"):
        cj.upsample(x, 2, method="linear", align_corners=1)
    with pytest.raises(TypeError, match="upsample: align_corners must be a bool, got 'no'"):
        cj.upsample(x, 2, method="linear", align_corners="no")
    with pytest.raises(ValueError, match="scale_factor must be > 0 and finite.*-2"):
        cj.upsample(x, -2)
    with pytest.raises(ValueError, match="scale_factor must be > 0 and finite"):
        cj.upsample(x, float("inf"))
    with pytest.raises(
        TypeError, match="scale_factor must be a number or a tuple of numbers, got '2'"
    ):
        cj.upsample(x, "2")
    with pytest.raises(ValueError, match="scale_factor must be a number or a tuple of 2 numbers"):
        cj.upsample(x, (2, 2, 2))
    with pytest.raises(ValueError, match="scale_factor must give an output size >= 1"):
        cj.upsample(x, 0.1)
    with pytest.raises(ValueError, match="size must be >= 1 in every dim, got 0"):
        cj.upsample(x, size=0)
    with pytest.raises(ValueError, match="size must be an int or a tuple of 2 ints"):
        cj.upsample(x, size=(4, 4, 4))
    with pytest.raises(ValueError, match="x must have at least 3 dims"):
        cj.upsample(jnp.ones((4, 4)), 2)
    with pytest.raises(TypeError, match="x must be an array"):
        cj.upsample([[[1.0]]], 2)
    with pytest.raises(ValueError, match="layout must be one of"):
        cj.upsample(x, 2, layout="NHWC")
    with pytest.raises(TypeError, match="upsample: x must be a floating-point array .*int32"):
        cj.upsample(jnp.ones((1, 4, 2), jnp.int32), 2, method="linear")
    with pytest.raises(ValueError, match="x must have non-empty spatial dims"):
        cj.upsample(jnp.ones((1, 0, 2)), size=3)


# ----------------------------------------------------------------------- pixel shuffle


def shuffle_reference(x, r):
    """channels_first pixel shuffle by explicit loops, any number of spatial dims."""
    n = x.ndim - 2
    batch, cr, *spatial = x.shape
    c = cr // r**n
    out = np.zeros((batch, c) + tuple(s * r for s in spatial), x.dtype)
    for b, ch in itertools.product(range(batch), range(c)):
        for offset in np.ndindex(*(r,) * n):
            flat = int(np.ravel_multi_index(offset, (r,) * n)) if n else 0
            for pos in np.ndindex(*spatial):
                dst = tuple(p * r + o for p, o in zip(pos, offset))
                out[(b, ch) + dst] = x[(b, ch * r**n + flat) + pos]
    return out


def test_pixel_shuffle_matches_torch(rng):
    for r, c in ((2, 3), (3, 1)):
        x = rng.standard_normal((2, c * r * r, 3, 4)).astype(np.float32)
        ty, tg, g = torch_value_and_grad(lambda t: F.pixel_shuffle(t, r), x, r)
        y_cf, dx_cf, y_cl, dx_cl = both_layouts(
            lambda layout: lambda a: cj.pixel_shuffle(a, r, layout=layout), x, g
        )
        for y, dx in ((y_cf, dx_cf), (y_cl, dx_cl)):
            np.testing.assert_array_equal(y, ty)
            np.testing.assert_array_equal(dx, tg)
        z = rng.standard_normal((2, c, 3 * r, 2 * r)).astype(np.float32)
        ty, tg, g = torch_value_and_grad(lambda t: F.pixel_unshuffle(t, r), z, r + 10)
        y_cf, dx_cf, y_cl, dx_cl = both_layouts(
            lambda layout: lambda a: cj.pixel_unshuffle(a, r, layout=layout), z, g
        )
        for y, dx in ((y_cf, dx_cf), (y_cl, dx_cl)):
            np.testing.assert_array_equal(y, ty)
            np.testing.assert_array_equal(dx, tg)


@pytest.mark.parametrize("n", [1, 3])
def test_pixel_shuffle_nd_matches_loop_reference(n, rng):
    r, c = 2, 2
    x = rng.standard_normal((2, c * r**n) + (3, 2, 2)[:n]).astype(np.float32)
    ref = shuffle_reference(x, r)
    np.testing.assert_array_equal(np.asarray(cj.pixel_shuffle(x, r, layout="channels_first")), ref)
    y_cl = cj.pixel_shuffle(to_cl(x), r)
    np.testing.assert_array_equal(to_cf(np.asarray(y_cl)), ref)
    np.testing.assert_array_equal(
        np.asarray(cj.pixel_unshuffle(ref, r, layout="channels_first")), x
    )
    np.testing.assert_array_equal(np.asarray(cj.pixel_unshuffle(y_cl, r)), to_cl(x))


def test_pixel_shuffle_errors():
    with pytest.raises(
        ValueError,
        match="pixel_shuffle: the channel count must be divisible by upscale_factor\\*\\*2 = 4, got 6",
    ):
        cj.pixel_shuffle(jnp.ones((1, 3, 3, 6)), 2)
    with pytest.raises(ValueError, match="divisible by upscale_factor\\*\\*2 = 9, got 4"):
        cj.pixel_shuffle(jnp.ones((1, 4, 3, 3)), 3, layout="channels_first")
    with pytest.raises(ValueError, match="upscale_factor must be >= 1, got 0"):
        cj.pixel_shuffle(jnp.ones((1, 3, 3, 4)), 0)
    with pytest.raises(TypeError, match="upscale_factor must be an int, got 2.0"):
        cj.pixel_shuffle(jnp.ones((1, 3, 3, 4)), 2.0)
    with pytest.raises(ValueError, match="pixel_shuffle: x must have at least 3 dims"):
        cj.pixel_shuffle(jnp.ones((4, 4)), 2)
    with pytest.raises(ValueError, match="pixel_shuffle: layout must be one of"):
        cj.pixel_shuffle(jnp.ones((1, 3, 3, 4)), 2, layout="nhwc")
    with pytest.raises(
        ValueError,
        match="pixel_unshuffle: every spatial size must be divisible by downscale_factor=2, got spatial shape \\(3, 4\\)",
    ):
        cj.pixel_unshuffle(jnp.ones((1, 3, 4, 1)), 2)
    with pytest.raises(ValueError, match="downscale_factor must be >= 1, got -1"):
        cj.pixel_unshuffle(jnp.ones((1, 4, 4, 1)), -1)
    with pytest.raises(TypeError, match="downscale_factor must be an int, got True"):
        cj.pixel_unshuffle(jnp.ones((1, 4, 4, 1)), True)
    with pytest.raises(ValueError, match="pixel_unshuffle: layout must be one of"):
        cj.pixel_unshuffle(jnp.ones((1, 4, 4, 1)), 2, layout="x")
    with pytest.raises(TypeError, match="pixel_unshuffle: x must be an array"):
        cj.pixel_unshuffle([[[1.0]]], 1)


# ------------------------------------------------------------------------ unfold / fold


def unfold_reference(x, k, s, p, d):
    """channels_first unfold by explicit loops: (N, C * prod(k), L), any rank."""
    n = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(lo, hi) for lo, hi in p])
    out = [(xp.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(n)]
    batch, c = x.shape[:2]
    res = np.zeros((batch, c, math.prod(k), math.prod(out)), x.dtype)
    for j, off in enumerate(np.ndindex(*k)):
        for l, pos in enumerate(np.ndindex(*out)):
            idx = tuple(pos[i] * s[i] + off[i] * d[i] for i in range(n))
            res[:, :, j, l] = xp[(slice(None), slice(None)) + idx]
    return res.reshape(batch, c * math.prod(k), math.prod(out))


def cf_patches_to_cl(p, kk):
    """(N, C * K, L) with (C, K) order -> (N, L, K * C) with (K, C) order."""
    batch, ck, length = p.shape
    return p.reshape(batch, ck // kk, kk, length).transpose(0, 3, 2, 1).reshape(batch, length, -1)


def cl_patches_to_cf(p, kk):
    batch, length, kc = p.shape
    return p.reshape(batch, length, kk, kc // kk).transpose(0, 3, 2, 1).reshape(batch, -1, length)


UNFOLD_2D = [
    dict(kernel_size=3),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    dict(kernel_size=2, stride=2),
    dict(kernel_size=(3, 1), stride=(1, 3), padding=1, dilation=(1, 2)),
]


def value_and_vjp(fn, x, g):
    """``fn(x)`` and its VJP with ``g``, in one jitted call."""

    @jax.jit
    def run(a, ct):
        y, vjp = jax.vjp(fn, a)
        return y, vjp(ct)[0]

    return [np.asarray(v) for v in run(jnp.asarray(x), jnp.asarray(g))]


def test_unfold_and_fold_match_torch_2d(rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    for i, kw in enumerate(UNFOLD_2D):
        args = dict(
            stride=kw.get("stride", 1), padding=kw.get("padding", 0), dilation=kw.get("dilation", 1)
        )
        k = kw["kernel_size"]
        kk = math.prod(k) if isinstance(k, tuple) else k * k
        tp, tg, g = torch_value_and_grad(lambda t: F.unfold(t, **kw), x, i)
        y_cf, dx_cf, y_cl, dx_cl = both_layouts(
            lambda layout: lambda a: cj.unfold(a, k, layout=layout, **args),
            x,
            g,
            cl_out=lambda a: cf_patches_to_cl(a, kk),
            cf_out=lambda a: cl_patches_to_cf(a, kk),
        )
        for y, dx in ((y_cf, dx_cf), (y_cl, dx_cl)):
            np.testing.assert_array_equal(y, tp)
            assert_close(dx, tg, kw)
        # fold of torch's patches: values and the gradient with respect to the patches.
        ty, tg, g = torch_value_and_grad(lambda t: F.fold(t, (7, 6), **kw), tp, i + 100)
        y, dp = value_and_vjp(
            lambda p: cj.fold(p, (7, 6), k, layout="channels_first", **args), tp, g
        )
        assert_close(y, ty, kw)
        np.testing.assert_array_equal(dp, tg)
        y, dp = value_and_vjp(
            lambda p: cj.fold(p, (7, 6), k, **args), cf_patches_to_cl(tp, kk), to_cl(g)
        )
        assert_close(to_cf(y), ty, kw)
        np.testing.assert_array_equal(cl_patches_to_cf(dp, kk), tg)


def test_unfold_fold_random_configs_match_torch():
    rng = np.random.default_rng(42)
    configs, inputs, expected = [], [], []
    for i in range(6):
        k = tuple(int(v) for v in rng.integers(1, 4, 2))
        d = tuple(int(v) for v in rng.integers(1, 3, 2))
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        p = tuple(int(rng.integers(0, kk // 2 + 2)) for kk in k)
        hw = tuple(int(v) for v in rng.integers(4, 8, 2))
        x = rng.standard_normal((1, 2) + hw).astype(np.float32)
        kw = dict(kernel_size=k, dilation=d, padding=p, stride=s)
        tp, tg, g = torch_value_and_grad(lambda t: F.unfold(t, **kw), x, i)
        tf = F.fold(torch.tensor(tp), hw, **kw).numpy()
        configs.append((k, d, s, p, hw))
        inputs.append((x, g))
        expected.append((tp, tg, tf))

    @jax.jit
    def run(inputs):
        out = []
        for (k, d, s, p, hw), (x, g) in zip(configs, inputs):
            y, vjp = jax.vjp(
                lambda a: cj.unfold(a, k, stride=s, padding=p, dilation=d, layout="channels_first"),
                x,
            )
            out.append(
                (
                    y,
                    vjp(g)[0],
                    cj.fold(y, hw, k, stride=s, padding=p, dilation=d, layout="channels_first"),
                )
            )
        return out

    for config, got, want in zip(configs, run(inputs), expected):
        np.testing.assert_array_equal(np.asarray(got[0]), want[0], err_msg=str(config))
        assert_close(np.asarray(got[1]), want[1], config)
        assert_close(np.asarray(got[2]), want[2], config)


@pytest.mark.parametrize("n", [1, 3])
def test_unfold_nd_matches_loop_reference(n, rng):
    x = rng.standard_normal((2, 2) + (7, 5, 4)[:n]).astype(np.float32)
    k, s, p, d = (3, 2, 2)[:n], (2, 1, 2)[:n], (1, 0, 1)[:n], (1, 2, 1)[:n]
    ref = unfold_reference(x, k, s, [(q, q) for q in p], d)
    kk = math.prod(k)
    cot = rng.standard_normal(ref.shape).astype(np.float32)

    def unf(a, layout):
        return cj.unfold(a, k, stride=s, padding=p, dilation=d, layout=layout)

    @jax.jit
    def run(x, cot):
        x_cl, cot_cl = jnp.moveaxis(x, 1, -1), jnp.asarray(cot_cl_of(cot))
        out = []
        for layout, xin, c in (("channels_first", x, cot), ("channels_last", x_cl, cot_cl)):
            # fold is the transpose of unfold: compare with jax.linear_transpose.
            (expect,) = jax.linear_transpose(lambda a: unf(a, layout), xin)(c)
            folded = cj.fold(c, x.shape[2:], k, stride=s, padding=p, dilation=d, layout=layout)
            out += [unf(xin, layout), folded, expect]
        return out

    def cot_cl_of(c):
        b, ck, length = c.shape
        return c.reshape(b, ck // kk, kk, length).transpose(0, 3, 2, 1).reshape(b, length, -1)

    y_cf, fold_cf, expect_cf, y_cl, fold_cl, expect_cl = (np.asarray(v) for v in run(x, cot))
    np.testing.assert_array_equal(y_cf, ref)
    np.testing.assert_array_equal(y_cl, cf_patches_to_cl(ref, kk))
    assert_close(fold_cf, expect_cf, n)
    assert_close(fold_cl, expect_cl, n)
    assert fold_cl.shape == to_cl(x).shape


def test_unfold_padding_strings_and_pairs(rng):
    x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)

    @jax.jit
    def run(x):
        return (
            cj.unfold(x, 3, padding="same", stride=2, layout="channels_first"),
            cj.unfold(x, (2, 3), padding="full", layout="channels_first"),
            cj.unfold(x, 2, padding=((0, 1), (2, 0)), layout="channels_first"),
            cj.unfold(x, 2, padding="valid", layout="channels_first"),
        )

    same, full, pairs, valid = (np.asarray(v) for v in run(x))
    # "same" with stride 2: ceil(5 / 2) x ceil(4 / 2) = 3 x 2 blocks; total pad 2 and 1.
    np.testing.assert_array_equal(
        same, unfold_reference(x, (3, 3), (2, 2), [(1, 1), (0, 1)], (1, 1))
    )
    np.testing.assert_array_equal(
        full, unfold_reference(x, (2, 3), (1, 1), [(1, 1), (2, 2)], (1, 1))
    )
    np.testing.assert_array_equal(
        pairs, unfold_reference(x, (2, 2), (1, 1), [(0, 1), (2, 0)], (1, 1))
    )
    np.testing.assert_array_equal(
        valid, unfold_reference(x, (2, 2), (1, 1), [(0, 0), (0, 0)], (1, 1))
    )


def test_unfold_fold_unbatched_match_torch(rng):
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    tp = F.unfold(torch.tensor(x), (2, 2), stride=1)  # unbatched (C, H, W) -> (C*K, L)
    tf = F.fold(tp, (5, 4), 2).numpy()

    @jax.jit
    def run(x, p):
        y_cl = cj.unfold(jnp.moveaxis(x, 0, -1), (2, 2))
        return (
            cj.unfold(x, (2, 2), layout="channels_first"),
            y_cl,
            cj.fold(p, (5, 4), 2, layout="channels_first"),
            cj.fold(y_cl, (5, 4), 2),
        )

    y, y_cl, f_cf, f_cl = (np.asarray(v) for v in run(x, tp.numpy()))
    np.testing.assert_array_equal(y, tp.numpy())
    np.testing.assert_array_equal(y_cl, cf_patches_to_cl(tp.numpy()[None], 4)[0])
    assert_close(f_cf, tf)
    assert_close(np.moveaxis(f_cl, -1, 0), tf)


def test_fold_of_ones_counts_overlaps():
    # Hand-derived: folding all-ones 2x2 stride-1 patches of a 3x3 image counts how many
    # windows cover each pixel: corners 1, edges 2, centre 4.
    y = cj.fold(jnp.ones((1, 4, 4)), (3, 3), 2, layout="channels_first")
    np.testing.assert_array_equal(np.asarray(y)[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


def test_unfold_fold_errors():
    x = jnp.ones((1, 4, 4, 2))
    with pytest.raises(
        ValueError,
        match="unfold: window \\(5, 5\\) \\(dilation \\(1, 1\\)\\) must fit in the padded input \\(4, 4\\)",
    ):
        cj.unfold(x, 5)
    with pytest.raises(ValueError, match="unfold: window must be >= 1 in every dim, got 0"):
        cj.unfold(x, 0)
    with pytest.raises(ValueError, match="unfold: stride must be >= 1 in every dim"):
        cj.unfold(x, 2, stride=0)
    with pytest.raises(ValueError, match="unfold: dilation must be >= 1 in every dim"):
        cj.unfold(x, 2, dilation=(1, 0))
    with pytest.raises(ValueError, match="unfold: padding must be non-negative, got -1"):
        cj.unfold(x, 2, padding=-1)
    with pytest.raises(ValueError, match="unfold: padding must be an int.*got 'causal'"):
        cj.unfold(x, 2, padding="causal")
    with pytest.raises(
        ValueError,
        match="unfold: x must have 5 dims \\(batched\\) or 4 \\(unbatched\\) for a 3-D window",
    ):
        cj.unfold(jnp.ones((4, 4)), (2, 2, 2))
    with pytest.raises(ValueError, match="unfold: window must have one entry per spatial dim"):
        cj.unfold(x, ())
    with pytest.raises(ValueError, match="unfold: x must have at least 3 dims"):
        cj.unfold(jnp.ones((4, 4)), 2)
    with pytest.raises(ValueError, match="unfold: layout must be one of"):
        cj.unfold(x, 2, layout="NCHW")
    with pytest.raises(
        TypeError, match="unfold: window must be an int or a tuple of ints, got 2.0"
    ):
        cj.unfold(x, 2.0)
    p = jnp.ones((1, 8, 9))  # C=2, K=4, L=9: a 3x3 grid of 2x2 blocks on a 4x4 image
    assert cj.fold(p, (4, 4), 2, layout="channels_first").shape == (1, 2, 4, 4)
    with pytest.raises(
        ValueError,
        match="fold: patches.shape\\[2\\] must equal the number of blocks 16 = prod\\(\\(4, 4\\)\\)",
    ):
        cj.fold(p, (5, 5), 2, layout="channels_first")
    with pytest.raises(
        ValueError, match="fold: patches.shape\\[1\\] must equal the number of blocks 9"
    ):
        cj.fold(jnp.ones((1, 8, 8)), (4, 4), 2)
    with pytest.raises(
        ValueError,
        match="fold: patches.shape\\[1\\] must be divisible by prod\\(window\\) = 4, got patches.shape=\\(1, 6, 9\\)",
    ):
        cj.fold(jnp.ones((1, 6, 9)), (4, 4), 2, layout="channels_first")
    with pytest.raises(
        ValueError,
        match="fold: patches.shape\\[0\\] must be divisible by prod\\(window\\) = 4, got patches.shape=\\(6, 9\\)",
    ):
        cj.fold(jnp.ones((6, 9)), (4, 4), 2, layout="channels_first")
    with pytest.raises(
        ValueError, match="fold: patches must have 3 dims \\(batched\\) or 2 \\(unbatched\\)"
    ):
        cj.fold(jnp.ones((1, 1, 8, 9)), (4, 4), 2)
    with pytest.raises(TypeError, match="fold: patches must be an array"):
        cj.fold([[1.0]], (4, 4), 2)
    with pytest.raises(ValueError, match="fold: output_size must be >= 1 in every dim"):
        cj.fold(p, (0, 4), 2)
    with pytest.raises(ValueError, match="fold: output_size must have one entry per spatial dim"):
        cj.fold(p, (), 2)
    with pytest.raises(ValueError, match="fold: window must be an int or a tuple of 2 ints"):
        cj.fold(p, (4, 4), (2, 2, 2))
    with pytest.raises(ValueError, match="fold: window \\(5, 5\\).*must fit in the padded input"):
        cj.fold(p, (4, 4), 5)
    with pytest.raises(ValueError, match="fold: layout must be one of"):
        cj.fold(p, (4, 4), 2, layout="cf")


def test_unfold_rejects_empty_spatial_dims_like_torch():
    # Found by the fuzz sweep (seed 7, config 4087): padding alone made patches.
    with pytest.raises(
        ValueError,
        match=r"unfold: x must have non-empty spatial dims, got "
        r"x.shape=\(1, 1, 0, 4\)",
    ):
        cj.unfold(jnp.ones((1, 0, 4)), (2, 2), padding=1, layout="channels_first")
    with pytest.raises(RuntimeError, match="non-zero dimensions"):
        torch.nn.functional.unfold(torch.ones(1, 0, 4), (2, 2), padding=1)


def test_upsample_align_corners_takes_numpy_bools(rng):
    x = jnp.asarray(rng.standard_normal((1, 4, 5, 2)), jnp.float32)
    for value in (True, False):
        np.testing.assert_array_equal(
            np.asarray(cj.upsample(x, size=(7, 9), method="linear", align_corners=np.bool_(value))),
            np.asarray(cj.upsample(x, size=(7, 9), method="linear", align_corners=value)),
        )
