"""cj.conv, depthwise_conv, separable_conv, conv_input_grad, conv_kernel_grad.

Oracles: torch.nn.functional.conv{1,2,3}d / torch.nn.grad (values and gradients),
scipy.signal / np.convolve (flip=True), hand-derived values, jax.vjp of conv.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from _layout import (
    check_conv_against_torch,
    kernel_to_cf,
    kernel_to_cl,
    parametrize_configs,
    random_geometry,
    random_padding,
    same_pads,
    to_cf,
    to_cl,
)
from jax.test_util import check_grads

import cnn_jax as cj

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_MODE = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}


def torch_conv(x, w, b, s, pads, d, g, mode):
    """Reference: torch pads explicitly (any amounts, any mode), then a VALID conv."""
    n = w.dim() - 2
    flat = [a for lo_hi in reversed(pads) for a in lo_hi]
    if any(flat):
        x = F.pad(x, flat, mode=TORCH_MODE[mode])
    return TORCH_CONV[n](x, w, b, stride=s, dilation=d, groups=g)


def _draw(rng):
    n, g, c_in, c_out, k, s, d, sp = random_geometry(rng, [1, 2, 3], 4, lambda n: 3, (4, 7))
    form = rng.choice(["int", "tuple", "pairs", "valid", "same"])
    mode = str(rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"]))
    padding, pads = random_padding(rng, form, n, sp, k, s, d)
    padding = "VALID" if padding == "valid" else padding  # strings are case-insensitive
    if all(i + lo + hi >= dd * (kk - 1) + 1 for i, (lo, hi), kk, dd in zip(sp, pads, k, d)):
        return n, g, c_in, c_out, k, s, d, sp, padding, pads, mode
    return None


@parametrize_configs(_draw, 14, "n g cin cout k s d sp p pads mode")
def test_conv_matches_torch_values_and_grads(rng, config):
    n, g, c_in, c_out, k, s, d, sp, padding, pads, mode, layout = config
    check_conv_against_torch(
        rng,
        lambda *a: cj.conv(
            *a, stride=s, padding=padding, dilation=d, groups=g, padding_mode=mode, layout=layout
        ),
        lambda *t: torch_conv(*t, s, pads, d, g, mode),
        [(2, c_in, *sp), (c_out, c_in // g, *k), (c_out,)],
        layout,
        lambda w: kernel_to_cl(w, n),
        lambda w: kernel_to_cf(w, n),
        str(config),
    )


def test_unbatched_and_same_with_stride(rng):
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)  # (C, H, W), unbatched
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    y = cj.conv(x, w, stride=2, padding="same", layout="channels_first")
    assert y.shape == (4, 4, 3)  # ceil(7 / 2), ceil(6 / 2)
    pads = same_pads((7, 6), (3, 2), (2, 2), (1, 1))
    ref = torch_conv(torch.tensor(x[None]), torch.tensor(w), None, (2, 2), pads, (1, 1), 1, "zeros")
    np.testing.assert_allclose(np.asarray(y), ref[0].numpy(), rtol=1e-5, atol=1e-5)
    # channels_last unbatched: (H, W, C)
    y_cl = cj.conv(np.moveaxis(x, 0, -1), kernel_to_cl(w, 2), stride=2, padding="SAME")
    np.testing.assert_allclose(
        np.asarray(y_cl), np.moveaxis(ref[0].numpy(), 0, -1), rtol=1e-5, atol=1e-5
    )


def test_ones_kernel_on_ones_is_kernel_volume_times_channels():
    y = cj.conv(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 3, 2)))
    np.testing.assert_array_equal(np.asarray(y), np.full((1, 3, 3, 2), 27.0))
    y = cj.conv(jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 2, 2)), groups=2, padding=1)
    assert float(y[0, 2, 2, 0]) == 18.0 and float(y[0, 0, 0, 1]) == 8.0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_flip_is_true_convolution_like_scipy(rng, n):
    sp = {1: (9,), 2: (6, 5), 3: (4, 5, 4)}[n]
    k = {1: (4,), 2: (3, 2), 3: (2, 3, 2)}[n]
    x = rng.standard_normal(sp).astype(np.float32)
    w = rng.standard_normal(k).astype(np.float32)
    for mode in ("full", "valid"):
        y = cj.conv(x[..., None], w[..., None, None], padding=mode, flip=True)[..., 0]
        np.testing.assert_allclose(
            np.asarray(y), scipy.signal.convolve(x, w, mode=mode), rtol=1e-5, atol=1e-5
        )
    if n == 1:
        for mode in ("full", "valid"):
            y = cj.conv(x[None], w[None, None], padding=mode, flip=True, layout="channels_first")[0]
            np.testing.assert_allclose(
                np.asarray(y), np.convolve(x, w, mode=mode), rtol=1e-5, atol=1e-5
            )
        w3 = w[:3]  # odd kernel: np.convolve 'same' is the centred symmetric padding
        y = cj.conv(x[:, None], w3[:, None, None], padding=1, flip=True)[:, 0]
        np.testing.assert_allclose(
            np.asarray(y), np.convolve(x, w3, mode="same"), rtol=1e-5, atol=1e-5
        )


def test_causal_padding_uses_only_the_past(rng):
    x = rng.standard_normal(10).astype(np.float32)
    w = rng.standard_normal(3).astype(np.float32)
    y = np.asarray(cj.conv(x[:, None], w[:, None, None], padding="causal", dilation=2))[:, 0]
    xp = np.concatenate([np.zeros(4, np.float32), x])
    expected = [sum(w[j] * xp[t + 2 * j] for j in range(3)) for t in range(10)]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # perturbing the future leaves the past unchanged
    x2 = x.copy()
    x2[6:] += 1.0
    y2 = np.asarray(cj.conv(x2[:, None], w[:, None, None], padding="Causal", dilation=2))[:, 0]
    np.testing.assert_array_equal(y[:6], y2[:6])


def test_depthwise_and_separable_match_torch(rng):
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    dw = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)  # multiplier 2
    pw = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    ref_dw = F.conv2d(torch.tensor(x), torch.tensor(dw), stride=2, padding=1, groups=3)
    ref_sep = F.conv2d(ref_dw, torch.tensor(pw), torch.tensor(b))
    y = cj.depthwise_conv(x, dw, stride=2, padding=1, layout="channels_first")
    np.testing.assert_allclose(np.asarray(y), ref_dw.numpy(), rtol=1e-5, atol=1e-5)
    y = cj.separable_conv(x, dw, pw, b, stride=2, padding=1, layout="channels_first")
    np.testing.assert_allclose(np.asarray(y), ref_sep.numpy(), rtol=1e-5, atol=1e-5)
    y = cj.separable_conv(
        to_cl(x),
        kernel_to_cl(dw, 2),
        kernel_to_cl(pw, 2),
        b,
        stride=2,
        padding=1,
        padding_mode="zeros",
    )
    np.testing.assert_allclose(to_cf(np.asarray(y)), ref_sep.numpy(), rtol=1e-5, atol=1e-5)
    ref_refl = F.conv2d(
        F.pad(torch.tensor(x), [1, 1, 1, 1], mode="reflect"), torch.tensor(dw), groups=3
    )
    y = cj.depthwise_conv(to_cl(x), kernel_to_cl(dw, 2), padding=1, padding_mode="reflect")
    np.testing.assert_allclose(to_cf(np.asarray(y)), ref_refl.numpy(), rtol=1e-5, atol=1e-5)


GRAD_CONFIGS = [
    # n, g, c_in, c_out, k, s, d, sp, padding
    (2, 1, 2, 3, (3, 3), (2, 2), (1, 1), (7, 6), 1),
    (2, 2, 4, 2, (2, 3), (2, 1), (1, 2), (6, 7), ((1, 0), (2, 1))),
    (1, 3, 3, 6, (3,), (3,), (2,), (11,), "same"),
    (3, 1, 2, 2, (2, 2, 1), (1, 2, 2), (1, 1, 1), (4, 5, 4), "valid"),
    (1, 1, 1, 2, (4,), (2,), (1,), (9,), "full"),
    (2, 2, 2, 4, (3, 2), (3, 2), (2, 1), (8, 7), 2),
]


@pytest.mark.parametrize(
    "i",
    range(len(GRAD_CONFIGS)),
    ids=[f"{c[0]}d-g{c[1]}-p{c[8]}".replace(" ", "") for c in GRAD_CONFIGS],
)
def test_conv_input_and_kernel_grad_equal_vjp_and_torch(rng, i):
    n, g, c_in, c_out, k, s, d, sp, padding = GRAD_CONFIGS[i]
    layout = ("channels_first", "channels_last")[i % 2]
    x_cf = rng.standard_normal((2, c_in, *sp)).astype(np.float32)
    w_cf = rng.standard_normal((c_out, c_in // g, *k)).astype(np.float32)
    x, w = (to_cl(x_cf), kernel_to_cl(w_cf, n)) if layout == "channels_last" else (x_cf, w_cf)
    kw = dict(stride=s, padding=padding, dilation=d, groups=g, layout=layout)
    y_shape = jax.eval_shape(lambda a, b: cj.conv(a, b, **kw), x, w).shape
    dy = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)

    @jax.jit
    def grads(x_, w_, dy_):
        gx_, gw_ = jax.vjp(lambda a, b: cj.conv(a, b, **kw), x_, w_)[1](dy_)
        dx_ = cj.conv_input_grad(dy_, w_, x_.shape, **kw)
        dk_ = cj.conv_kernel_grad(x_, dy_, w_.shape, **kw)
        return gx_, gw_, dx_, dk_, cj.conv_input_grad(dy_, w_, sp, **kw)

    gx, gw, dx, dk, sp_only = grads(x, w, dy)
    msg = f"n={n} g={g} k={k} s={s} d={d} padding={padding}"
    assert dx.shape == x.shape and dk.shape == w.shape, msg
    np.testing.assert_allclose(np.asarray(dx), np.asarray(gx), rtol=1e-4, atol=1e-4, err_msg=msg)
    np.testing.assert_allclose(np.asarray(dk), np.asarray(gw), rtol=1e-4, atol=1e-4, err_msg=msg)
    # spatial-only input_shape works too
    np.testing.assert_allclose(np.asarray(sp_only), np.asarray(dx), rtol=0, atol=0)
    # torch.nn.grad oracle (symmetric int padding only)
    if isinstance(padding, int):
        dy_cf = np.asarray(dy) if layout == "channels_first" else to_cf(np.asarray(dy))
        grad = torch.nn.grad
        tin = getattr(grad, f"conv{n}d_input")(
            x_cf.shape,
            torch.tensor(w_cf),
            torch.tensor(dy_cf),
            stride=s,
            padding=padding,
            dilation=d,
            groups=g,
        )
        twt = getattr(grad, f"conv{n}d_weight")(
            torch.tensor(x_cf),
            w_cf.shape,
            torch.tensor(dy_cf),
            stride=s,
            padding=padding,
            dilation=d,
            groups=g,
        )
        dx_cf = np.asarray(dx) if layout == "channels_first" else to_cf(np.asarray(dx))
        dk_cf = np.asarray(dk) if layout == "channels_first" else kernel_to_cf(np.asarray(dk), n)
        np.testing.assert_allclose(dx_cf, tin.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dk_cf, twt.numpy(), rtol=1e-4, atol=1e-4)


def test_grads_unbatched(rng):
    x = jnp.asarray(rng.standard_normal((6, 5, 2)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 2, 2, 3)), jnp.float32)
    y, vjp = jax.vjp(lambda a, b: cj.conv(a, b, stride=2, padding=1), x, w)
    gx, gw = vjp(jnp.ones_like(y))
    np.testing.assert_allclose(
        np.asarray(cj.conv_input_grad(jnp.ones_like(y), w, x.shape, stride=2, padding=1)),
        np.asarray(gx),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        np.asarray(cj.conv_kernel_grad(x, jnp.ones_like(y), w.shape, stride=2, padding=1)),
        np.asarray(gw),
        rtol=1e-5,
        atol=1e-5,
    )


def test_check_grads(rng):
    x = jnp.asarray(rng.standard_normal((1, 5, 4, 2)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 2, 1, 2)), jnp.float32)
    b = jnp.asarray(rng.standard_normal(2), jnp.float32)

    def f(x_, w_, b_):
        return cj.conv(
            x_,
            w_,
            b_,
            stride=(2, 1),
            padding=((1, 0), (1, 1)),
            dilation=(1, 2),
            groups=2,
            padding_mode="reflect",
        )

    check_grads(
        jax.jit(f), (x, w, b), order=1, modes=("fwd", "rev"), eps=1e-2, atol=5e-2, rtol=5e-2
    )


@pytest.mark.parametrize(
    "layout,padding_mode,order",
    [
        ("channels_last", "reflect", 1),
        ("channels_first", "zeros", 2),
        ("channels_last", "circular", 2),
    ],
)
def test_check_grads_float64_default_tolerances(rng, layout, padding_mode, order):
    # Forward and reverse mode, first and second order, in float64 at JAX's default
    # tolerances (float32 needs 5e-2, which would hide a wrong gradient).
    x = rng.standard_normal((1, 2, 5, 4) if layout == "channels_first" else (1, 5, 4, 2))
    w = rng.standard_normal((2, 1, 3, 2) if layout == "channels_first" else (3, 2, 1, 2))
    b = rng.standard_normal(2)

    def f(x_, w_, b_):
        return cj.conv(
            x_,
            w_,
            b_,
            stride=(2, 1),
            padding=((1, 0), (1, 1)),
            dilation=(1, 2),
            groups=2,
            padding_mode=padding_mode,
            layout=layout,
        )

    with jax.enable_x64(True):
        check_grads(
            jax.jit(f), tuple(map(jnp.asarray, (x, w, b))), order=order, modes=("fwd", "rev")
        )


def test_jit_grad_vmap_compose(rng):
    x = jnp.asarray(rng.standard_normal((3, 6, 6, 2)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32)
    f = jax.jit(lambda a, b: cj.conv(a, b, stride=2, padding="same"))
    # vmap over unbatched inputs equals the batched call
    np.testing.assert_allclose(
        np.asarray(jax.vmap(f, (0, None))(x, w)), np.asarray(f(x, w)), rtol=1e-5, atol=1e-5
    )
    g = jax.jit(jax.grad(lambda b: jnp.sum(f(x, b) ** 2)))(w)
    assert g.shape == w.shape and bool(jnp.all(jnp.isfinite(g)))
    # the gradient of sum(y) w.r.t. the kernel is the sum of the input patches
    gk = jax.grad(lambda b: jnp.sum(cj.conv(x, b)))(w)
    expected = np.stack(
        [
            np.stack([np.asarray(x)[:, i : i + 4, j : j + 4, :].sum((0, 1, 2)) for j in range(3)])
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(
        np.asarray(gk), np.repeat(expected[..., None], 4, -1), rtol=1e-4, atol=1e-4
    )


def test_precision_and_preferred_element_type(rng):
    x = jnp.asarray(rng.standard_normal((1, 4, 4, 2)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((2, 2, 2, 3)), jnp.bfloat16)
    y = cj.conv(x, w, preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST)
    assert y.dtype == jnp.float32
    ref = cj.conv(x.astype(jnp.float32), w.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert cj.conv(x, w).dtype == jnp.bfloat16


def test_conv_errors():
    x = jnp.zeros((1, 5, 5, 4))
    w = jnp.zeros((3, 3, 4, 6))
    with pytest.raises(
        ValueError, match="conv: groups must divide the input channels, got groups=3 for C_in=4"
    ):
        cj.conv(x, jnp.zeros((3, 3, 1, 6)), groups=3)
    with pytest.raises(
        ValueError, match="conv: groups must divide the output channels, got groups=2 for C_out=5"
    ):
        cj.conv(x, jnp.zeros((3, 3, 2, 5)), groups=2)
    with pytest.raises(
        ValueError, match=r"conv: kernel in-channels must equal C_in // groups = 4 // 1 = 4, got 3"
    ):
        cj.conv(x, jnp.zeros((3, 3, 3, 6)))
    with pytest.raises(
        ValueError,
        match=r"conv: kernel \(effective size \(7, 7\) with dilation \(3, 3\)\) must not exceed the padded input \(5, 5\)",
    ):
        cj.conv(x, w, dilation=3)
    with pytest.raises(ValueError, match="conv: kernel must have at least 3 dims"):
        cj.conv(x, jnp.zeros((3, 3)))
    with pytest.raises(TypeError, match="conv: kernel must be an array"):
        cj.conv(x, [[1.0]])
    with pytest.raises(
        ValueError,
        match=r"conv: x must have 4 dims \(batched\) or 3 \(unbatched\) for a 2-D kernel",
    ):
        cj.conv(jnp.zeros((5, 5)), w)
    with pytest.raises(
        ValueError,
        match="conv: padding must be smaller than the input size.*padding_mode='reflect'",
    ):
        cj.conv(x, w, padding=5, padding_mode="reflect")
    with pytest.raises(
        ValueError, match="conv: padding must be at most the input size.*padding_mode='circular'"
    ):
        cj.conv(x, w, padding=6, padding_mode="circular")
    with pytest.raises(ValueError, match="conv: padding_mode must be one of"):
        cj.conv(x, w, padding_mode="symmetric")
    with pytest.raises(ValueError, match="conv: layout must be one of"):
        cj.conv(x, w, layout="NCHW")
    with pytest.raises(ValueError, match="conv: stride must be >= 1"):
        cj.conv(x, w, stride=0)
    with pytest.raises(ValueError, match="conv: dilation must be an int or a tuple of 2 ints"):
        cj.conv(x, w, dilation=(1, 1, 1))
    with pytest.raises(TypeError, match="conv: stride must be an int or a tuple of ints, got 1.5"):
        cj.conv(x, w, stride=1.5)
    with pytest.raises(ValueError, match="conv: groups must be >= 1"):
        cj.conv(x, w, groups=0)
    with pytest.raises(TypeError, match="conv: groups must be an int, got 2.0"):
        cj.conv(x, w, groups=2.0)
    with pytest.raises(TypeError, match=r"conv: groups must be an int, got \(2,\)"):
        cj.conv(x, w, groups=(2,))
    with pytest.raises(ValueError, match="conv: padding='causal' is only defined for 1-D"):
        cj.conv(x, w, padding="causal")
    with pytest.raises(ValueError, match="conv: padding must be an int, a tuple of 2 ints"):
        cj.conv(x, w, padding="half")
    with pytest.raises(ValueError, match="conv: padding must be non-negative"):
        cj.conv(x, w, padding=-1)
    with pytest.raises(ValueError, match=r"conv: bias must have shape \(6,\), got \(4,\)"):
        cj.conv(x, w, jnp.zeros(4))
    with pytest.raises(ValueError, match="conv: kernel spatial sizes must be >= 1"):
        cj.conv(x, jnp.zeros((0, 3, 4, 6)))


def test_depthwise_separable_errors():
    x = jnp.zeros((1, 5, 5, 4))
    with pytest.raises(
        ValueError,
        match=r"depthwise_conv: kernel in-channels must equal C_in // groups = 4 // 4 = 1, got 4",
    ):
        cj.depthwise_conv(x, jnp.zeros((3, 3, 4, 4)))
    with pytest.raises(ValueError, match="depthwise_conv: groups must divide the output channels"):
        cj.depthwise_conv(x, jnp.zeros((3, 3, 1, 6)))
    with pytest.raises(ValueError, match="depthwise_conv: x must have 4 dims"):
        cj.depthwise_conv(jnp.zeros((5, 4)), jnp.zeros((3, 3, 1, 4)))
    with pytest.raises(
        ValueError,
        match="separable_conv: pointwise_kernel must be a 1x1 kernel with 2 spatial dims",
    ):
        cj.separable_conv(x, jnp.zeros((3, 3, 1, 4)), jnp.zeros((3, 3, 4, 8)))
    with pytest.raises(
        ValueError,
        match="separable_conv: pointwise_kernel in-channels must equal the depthwise output channels 4",
    ):
        cj.separable_conv(x, jnp.zeros((3, 3, 1, 4)), jnp.zeros((1, 1, 5, 8)))
    with pytest.raises(
        ValueError, match=r"separable_conv: bias must have shape \(8,\), got \(3,\)"
    ):
        cj.separable_conv(x, jnp.zeros((3, 3, 1, 4)), jnp.zeros((1, 1, 4, 8)), jnp.zeros(3))
    with pytest.raises(
        ValueError, match="separable_conv: depthwise_kernel must have at least 3 dims"
    ):
        cj.separable_conv(x, jnp.zeros((3, 3)), jnp.zeros((1, 1, 4, 8)))
    with pytest.raises(ValueError, match="depthwise_conv: layout must be one of"):
        cj.depthwise_conv(x, jnp.zeros((3, 3, 1, 4)), layout="nhwc")


def test_grad_op_errors():
    x = jnp.zeros((2, 6, 6, 2))
    w = jnp.zeros((3, 3, 2, 4))
    dy = jnp.zeros((2, 4, 4, 4))
    with pytest.raises(
        ValueError,
        match=r"conv_input_grad: dy spatial shape must be the conv output shape \(4, 4\)",
    ):
        cj.conv_input_grad(jnp.zeros((2, 5, 5, 4)), w, x.shape)
    with pytest.raises(
        ValueError,
        match="conv_input_grad: dy channels must equal the kernel's output channels C_out=4, got 3",
    ):
        cj.conv_input_grad(jnp.zeros((2, 4, 4, 3)), w, x.shape)
    with pytest.raises(ValueError, match="conv_input_grad: input_shape must be x's shape"):
        cj.conv_input_grad(dy, w, (6,))
    with pytest.raises(ValueError, match="conv_input_grad: input_shape must have C_in=2 channels"):
        cj.conv_input_grad(dy, w, (2, 6, 6, 3))
    with pytest.raises(
        ValueError, match="conv_input_grad: input_shape must be batched exactly when dy is"
    ):
        cj.conv_input_grad(dy, w, (6, 6, 2))
    with pytest.raises(ValueError, match="conv_input_grad: groups must divide the output channels"):
        cj.conv_input_grad(dy, w, x.shape, groups=3)
    with pytest.raises(
        ValueError, match="conv_kernel_grad: kernel_shape must be the full kernel shape"
    ):
        cj.conv_kernel_grad(x, dy, (3, 3))
    with pytest.raises(
        ValueError,
        match=r"conv_kernel_grad: dy spatial shape must be the conv output shape \(2, 2\)",
    ):
        cj.conv_kernel_grad(x, dy, w.shape, stride=2)
    with pytest.raises(
        ValueError, match="conv_kernel_grad: x must have C_in=2 channels and dy's batch size"
    ):
        cj.conv_kernel_grad(jnp.zeros((1, 6, 6, 2)), dy, w.shape)
    with pytest.raises(ValueError, match="conv_kernel_grad: x must be batched exactly when dy is"):
        cj.conv_kernel_grad(jnp.zeros((6, 6, 2)), dy, w.shape)
    with pytest.raises(
        ValueError, match="conv_kernel_grad: kernel must fit|conv_kernel_grad: kernel \\(effective"
    ):
        cj.conv_kernel_grad(jnp.zeros((2, 2, 2, 2)), dy, w.shape)
    with pytest.raises(ValueError, match="conv_kernel_grad: layout must be one of"):
        cj.conv_kernel_grad(x, dy, w.shape, layout="x")


def _ops(lowered):
    """The stablehlo op names of a lowered computation, in order."""
    import re

    return re.findall(r"stablehlo\.(\w+)", lowered.as_text())


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_the_wrapper_lowers_to_the_same_program_as_raw_lax(layout):
    # The wrapper costs nothing at run time: for int padding, stride and dilation,
    # cj.conv emits exactly the ops of a hand-written lax.conv_general_dilated, forward
    # and backward (argument checks all happen at trace time).
    x = jnp.zeros((2, 9, 9, 4) if layout == "channels_last" else (2, 4, 9, 9))
    w = jnp.zeros((3, 3, 4, 8) if layout == "channels_last" else (8, 4, 3, 3))
    specs = ("NHWC", "HWIO", "NHWC") if layout == "channels_last" else ("NCHW", "OIHW", "NCHW")

    def ours(x, w):
        return cj.conv(x, w, stride=2, padding=1, dilation=1, layout=layout)

    def raw(x, w):
        return jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=specs)

    for f in (lambda g: g, lambda g: jax.grad(lambda x, w: jnp.sum(g(x, w) ** 2), (0, 1))):
        assert _ops(jax.jit(f(ours)).lower(x, w)) == _ops(jax.jit(f(raw)).lower(x, w))


def test_conv_rejects_empty_spatial_dims_like_torch():
    # Found by tests/fuzz.py: padding alone used to invent an output from an empty dim;
    # PyTorch raises ("Only zero batch or zero channel inputs are supported").
    with pytest.raises(
        ValueError,
        match=r"conv: x must have non-empty spatial dims, got "
        r"x.shape=\(2, 3, 0, 2\)",
    ):
        cj.conv(jnp.ones((2, 3, 0, 2)), jnp.ones((1, 1, 2, 2)), padding=1)
    with pytest.raises(RuntimeError, match="Only zero batch or zero channel"):
        torch.nn.functional.conv2d(torch.ones(2, 2, 3, 0), torch.ones(2, 2, 1, 1), padding=1)


def test_conv_transpose_rejects_empty_spatial_dims_like_torch():
    # Found by the fuzz sweep (seed 7, config 1462): output_padding made an output.
    with pytest.raises(
        ValueError,
        match=r"conv_transpose: x must have non-empty spatial "
        r"dims, got x.shape=\(1, 0, 3, 2\)",
    ):
        cj.conv_transpose(
            jnp.ones((1, 0, 3, 2)), jnp.ones((2, 2, 2, 2)), stride=2, output_padding=1
        )
    with pytest.raises(RuntimeError):
        torch.nn.functional.conv_transpose2d(
            torch.ones(1, 2, 0, 3), torch.ones(2, 2, 2, 2), stride=2, output_padding=1
        )


# Kernel taps that read only zero padding are sliced off before the conv (the input
# is cropped where the kept taps never reach its ends). (x shape NC*sp, kernel OI*k,
# stride, padding, dilation, groups, flip).
DEAD_TAPS = {
    # XLA:CPU's algebraic simplifier aborted the interpreter compiling dx of these
    # ("Window dimensions do not match RHS shape"); the second is fuzz seed 7 config 3049.
    "xla-abort-2d": ((1, 1, 1, 4), (1, 1, 3, 2), (1, 2), (2, 1), (2, 1), 1, False),
    "xla-abort-3d-grouped-flip": (
        (2, 4, 1, 4, 1),
        (2, 2, 3, 2, 1),
        (1, 2, 3),
        (2, 1, 2),
        (2, 1, 1),
        2,
        True,
    ),
    # One output and a dilated window in one dim, a stride in the other (the third is
    # fuzz seed 7 config 4939).
    "xla-abort-dilated-single-output": (
        (1, 1, 3, 4),
        (1, 1, 2, 2),
        (2, 2),
        (0, 1),
        (2, 1),
        1,
        False,
    ),
    "xla-abort-2d-grouped-flip": ((2, 4, 4, 4), (2, 2, 3, 2), (2, 2), (1, 1), (2, 1), 2, True),
    # A strided dim whose low padding reaches the first window's last tap, beside
    # another strided dim (random search).
    "xla-abort-low-padding-at-last-tap": (
        (1, 2, 2, 4),
        (2, 2, 3, 2),
        (2, 2),
        (2, 1),
        (1, 1),
        1,
        False,
    ),
    # Every tap of the first dim reads padding: the output is zeros (random search).
    "every-tap-reads-padding": ((1, 2, 1, 4), (2, 2, 2, 2), (2, 2), (2, 2), (3, 1), 1, False),
    "crop-low": ((2, 2, 6), (3, 2, 3), (5,), (3,), (4,), 1, False),
    "crop-both-ends": ((2, 2, 3), (3, 2, 3), (1,), (4,), (5,), 1, True),
}


@pytest.mark.parametrize("case", DEAD_TAPS, ids=list(DEAD_TAPS))
def test_windows_reading_padding_or_dilated_over_one_output_are_simplified_exactly(rng, case):
    x_shape, w_shape, s, p, d, g, flip = DEAD_TAPS[case]
    n = len(s)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    wt_used = torch.flip(wt, dims=tuple(range(2, n + 2))) if flip else wt
    ref = TORCH_CONV[n](xt, wt_used, stride=s, padding=p, dilation=d, groups=g)
    ct = rng.standard_normal(tuple(ref.shape))
    (ref * torch.tensor(ct)).sum().backward()
    with jax.enable_x64(True):

        @jax.jit
        def f(x_, w_, ct_):
            y_, vjp = jax.vjp(
                lambda a, b: cj.conv(
                    a,
                    b,
                    stride=s,
                    padding=p,
                    dilation=d,
                    groups=g,
                    flip=flip,
                    layout="channels_first",
                ),
                x_,
                w_,
            )
            return y_, *vjp(ct_)

        y, gx, gw = f(x, w, ct)
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flip", ["no", 1, None])
def test_flip_takes_only_bools(flip):
    x, k = jnp.ones((1, 4, 4, 1)), jnp.ones((2, 2, 1, 1))
    with pytest.raises(TypeError, match=r"conv: flip must be a bool, got"):
        cj.conv(x, k, flip=flip)
    # numpy's bool is a bool: the true convolution of a constant equals the correlation
    np.testing.assert_array_equal(cj.conv(x, k, flip=np.bool_(True)), cj.conv(x, k))
