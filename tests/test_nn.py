"""cnn_jax.nn layers: layer == op with the layer's params, == PyTorch's modules, init
bounds as PyTorch's, parameter shapes, nnx.jit/grad, mixed precision, every error."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _layout import to_cf, to_cl
from flax import nnx

import cnn_jax as cj
from cnn_jax import nn as cnn

TORCH_CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
TORCH_CONVT = {
    1: torch.nn.ConvTranspose1d,
    2: torch.nn.ConvTranspose2d,
    3: torch.nn.ConvTranspose3d,
}


# --- layout helpers (the oracle side is always PyTorch's NC* / OI* layout) ---------


def conv_weight_to_torch(kernel, layout):
    """(*k, I/g, O) -> (O, I/g, *k); channels_first is already PyTorch's."""
    k = np.asarray(kernel)
    if layout == "channels_first":
        return k
    n = k.ndim - 2
    return k.transpose((n + 1, n) + tuple(range(n)))


def convt_weight_to_torch(kernel, layout):
    """(*k, I, O/g) -> (I, O/g, *k); channels_first is already PyTorch's."""
    k = np.asarray(kernel)
    if layout == "channels_first":
        return k
    n = k.ndim - 2
    return k.transpose((n, n + 1) + tuple(range(n)))


def t(a):
    return torch.from_numpy(np.array(a, np.float32))  # a writable copy


def layer_input(rng, shape_cf, layout):
    """A random input given in PyTorch's (N, C, *sp) shape, in the layer's layout."""
    x = rng.standard_normal(shape_cf).astype(np.float32)
    return (x if layout == "channels_first" else to_cl(x)), x


def close(actual, expected, layout, atol=1e-5, rtol=1e-5):
    actual = np.asarray(actual, np.float32)
    if layout == "channels_last":
        actual = to_cf(actual)
    np.testing.assert_allclose(actual, np.asarray(expected), atol=atol, rtol=rtol)


LAYOUTS = ["channels_last", "channels_first"]


@nnx.jit
def apply(layer, x):
    """layer(x), jitted: one compile per (config, shape) is far cheaper than eager
    op-by-op dispatch of the ops' many small primitives."""
    return layer(x)


def call_op(fn, *arrays, **static):
    """The functional op, jitted the same way, with its static arguments bound."""
    return jax.jit(functools.partial(fn, **static))(*arrays)


# (n, x shape (N, C, *sp), C_out, kwargs accepted by both the layer and torch.nn.Conv*d)
CONV_CONFIGS = [
    (
        1,
        (2, 4, 9),
        6,
        dict(kernel_size=(3,), stride=2, padding=1, groups=2, padding_mode="reflect"),
    ),
    (1, (2, 3, 8), 2, dict(kernel_size=(2,), dilation=2, padding="same")),
    (
        2,
        (2, 4, 7, 6),
        6,
        dict(
            kernel_size=(3, 2),
            stride=(2, 1),
            padding=(1, 0),
            dilation=(1, 2),
            groups=2,
            padding_mode="circular",
        ),
    ),
    (2, (1, 3, 6, 6), 4, dict(kernel_size=3, padding=1, padding_mode="replicate", bias=False)),
    (3, (1, 2, 5, 4, 6), 3, dict(kernel_size=(2, 2, 2), padding=1, stride=(1, 2, 1))),
]


def _conv_layer(n, c_in, c_out, kw, layout, seed=0, **extra):
    kw = dict(kw)
    use_bias = kw.pop("bias", True)
    return cnn.Conv(
        c_in,
        c_out,
        kw.pop("kernel_size"),
        use_bias=use_bias,
        layout=layout,
        rngs=nnx.Rngs(seed),
        **kw,
        **extra,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=lambda c: f"{c[0]}d-{c[3]}")
def test_conv_layer_equals_op_and_torch(cfg, layout, rng):
    n, shape, c_out, kw = cfg
    layer = _conv_layer(n, shape[1], c_out, kw, layout)
    x, x_cf = layer_input(rng, shape, layout)
    y = apply(layer, jnp.asarray(x))
    # The op called with the layer's own parameters and config.
    bias = None if layer.bias is None else layer.bias[...]
    y_op = call_op(
        cj.conv,
        x,
        layer.kernel[...],
        bias,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        padding_mode=layer.padding_mode,
        layout=layout,
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_op))
    # PyTorch's module given the same weights.
    tkw = dict(kw)
    tm = TORCH_CONV[n](shape[1], c_out, **tkw)
    with torch.no_grad():
        tm.weight.copy_(t(conv_weight_to_torch(layer.kernel[...], layout)))
        if layer.bias is not None:
            tm.bias.copy_(t(layer.bias[...]))
    assert tuple(tm.weight.shape) == conv_weight_to_torch(layer.kernel[...], layout).shape
    with torch.no_grad():
        expected = tm(t(x_cf)).numpy()
    close(y, expected, layout)


def test_conv_flip_and_causal_against_numpy(rng):
    # flip=True is the mathematical convolution: np.convolve(..., "full").
    x = rng.standard_normal(9).astype(np.float32)
    layer = cnn.Conv(1, 1, (4,), padding="full", flip=True, use_bias=False, rngs=nnx.Rngs(0))
    k = np.asarray(layer.kernel[...])[:, 0, 0]
    y = apply(layer, jnp.asarray(x)[None, :, None])[0, :, 0]
    np.testing.assert_allclose(np.asarray(y), np.convolve(x, k, "full"), atol=1e-5)
    # causal: y[i] only sees x[:i + 1] -> equals np.convolve's first len(x) outputs
    # with the kernel flipped (cross-correlation).
    layer = cnn.Conv(1, 1, (3,), padding="causal", use_bias=False, rngs=nnx.Rngs(1))
    k = np.asarray(layer.kernel[...])[:, 0, 0]
    y = apply(layer, jnp.asarray(x)[None, :, None])[0, :, 0]
    np.testing.assert_allclose(np.asarray(y), np.convolve(x, k[::-1], "full")[: len(x)], atol=1e-5)


def test_conv_same_padding_with_stride_hand_derived(rng):
    # TF/XLA "same": out = ceil(in / s); total pad (out - 1) * s + k - in, extra on the high
    # side. H = 6: out 3, total 1 -> (0, 1); W = 7: out 4, total 2 -> (1, 1).
    layer = cnn.Conv(2, 3, 3, stride=2, padding="same", layout="channels_first", rngs=nnx.Rngs(0))
    x = rng.standard_normal((1, 2, 6, 7)).astype(np.float32)
    y = apply(layer, jnp.asarray(x))
    expected = F.conv2d(
        F.pad(t(x), (1, 1, 0, 1)), t(layer.kernel[...]), t(layer.bias[...]), stride=2
    )
    assert y.shape == (1, 3, 3, 4)
    np.testing.assert_allclose(np.asarray(y), expected.numpy(), atol=1e-5, rtol=1e-5)


def test_conv_ones_kernel_hand_value():
    # Flax's check: a ones kernel on ones gives kernel_size * in_features (+ bias 0).
    layer = cnn.Conv(
        3,
        4,
        3,
        kernel_init=nnx.initializers.ones,
        bias_init=nnx.initializers.zeros,
        rngs=nnx.Rngs(0),
    )
    y = apply(layer, jnp.ones((1, 5, 5, 3)))
    assert y.shape == (1, 3, 3, 4)
    np.testing.assert_array_equal(np.asarray(y), np.full((1, 3, 3, 4), 27.0, np.float32))


CONVT_CONFIGS = [
    (1, (2, 4, 5), 6, dict(kernel_size=(3,), stride=2, padding=1, output_padding=1, groups=2)),
    (2, (1, 3, 4, 5), 4, dict(kernel_size=(2, 3), stride=(2, 1), dilation=(1, 2), padding=(0, 1))),
    (3, (1, 2, 3, 2, 3), 2, dict(kernel_size=(2, 2, 2), stride=2, bias=False)),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", CONVT_CONFIGS, ids=lambda c: f"{c[0]}d")
def test_conv_transpose_layer_equals_op_and_torch(cfg, layout, rng):
    n, shape, c_out, kw = cfg
    kw = dict(kw)
    use_bias = kw.pop("bias", True)
    k = kw.pop("kernel_size")
    layer = cnn.ConvTranspose(
        shape[1], c_out, k, use_bias=use_bias, layout=layout, rngs=nnx.Rngs(0), **kw
    )
    x, x_cf = layer_input(rng, shape, layout)
    y = apply(layer, jnp.asarray(x))
    bias = None if layer.bias is None else layer.bias[...]
    y_op = call_op(
        cj.conv_transpose,
        x,
        layer.kernel[...],
        bias,
        stride=layer.stride,
        padding=layer.padding,
        output_padding=layer.output_padding,
        dilation=layer.dilation,
        groups=layer.groups,
        layout=layout,
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_op))
    tm = TORCH_CONVT[n](shape[1], c_out, k, bias=use_bias, **kw)
    w = convt_weight_to_torch(layer.kernel[...], layout)
    assert tuple(tm.weight.shape) == w.shape
    with torch.no_grad():
        tm.weight.copy_(t(w))
        if use_bias:
            tm.bias.copy_(t(layer.bias[...]))
        expected = tm(t(x_cf)).numpy()
    close(y, expected, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_and_separable_equal_op_and_torch(layout, rng):
    x, x_cf = layer_input(rng, (2, 3, 7, 6), layout)
    dw = cnn.DepthwiseConv(
        3,
        (3, 3),
        depth_multiplier=2,
        stride=2,
        padding=1,
        padding_mode="reflect",
        layout=layout,
        rngs=nnx.Rngs(0),
    )
    y = apply(dw, jnp.asarray(x))
    y_op = call_op(
        cj.depthwise_conv,
        x,
        dw.kernel[...],
        dw.bias[...],
        stride=2,
        padding=1,
        padding_mode="reflect",
        layout=layout,
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_op))
    tm = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1, groups=3, padding_mode="reflect")
    w = conv_weight_to_torch(dw.kernel[...], layout)
    assert tuple(tm.weight.shape) == w.shape
    with torch.no_grad():
        tm.weight.copy_(t(w))
        tm.bias.copy_(t(dw.bias[...]))
        close(y, tm(t(x_cf)).numpy(), layout)

    sep = cnn.SeparableConv(
        3, 5, 3, depth_multiplier=2, padding="same", layout=layout, rngs=nnx.Rngs(1)
    )
    y = apply(sep, jnp.asarray(x))
    y_op = call_op(
        cj.separable_conv,
        x,
        sep.depthwise_kernel[...],
        sep.pointwise_kernel[...],
        sep.bias[...],
        padding="same",
        layout=layout,
    )
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_op))
    t_dw = torch.nn.Conv2d(3, 6, 3, padding="same", groups=3, bias=False)
    t_pw = torch.nn.Conv2d(6, 5, 1)
    w_dw = conv_weight_to_torch(sep.depthwise_kernel[...], layout)
    w_pw = conv_weight_to_torch(sep.pointwise_kernel[...], layout)
    assert (tuple(t_dw.weight.shape), tuple(t_pw.weight.shape)) == (w_dw.shape, w_pw.shape)
    with torch.no_grad():
        t_dw.weight.copy_(t(w_dw))
        t_pw.weight.copy_(t(w_pw))
        t_pw.bias.copy_(t(sep.bias[...]))
        close(y, t_pw(t_dw(t(x_cf))).numpy(), layout)


# --- initialisation: PyTorch's bounds, from PyTorch's own fan-in computation -------


def _torch_bound(torch_layer):
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch_layer.weight)
    return 1.0 / math.sqrt(fan_in)


def _check_uniform(values, bound, check_std=True):
    v = np.asarray(values, np.float64).ravel()
    assert np.abs(v).max() <= bound * (1 + 1e-6)
    assert np.abs(v).max() >= 0.9 * bound  # really spans the interval, not a narrower one
    if check_std:
        # U(-b, b) has std b / sqrt(3) and mean 0.
        np.testing.assert_allclose(v.std(), bound / math.sqrt(3), rtol=0.03)
        assert abs(v.mean()) < 0.02 * bound


INIT_CASES = [
    # (our layer factory, torch layer of the same config, kernel attribute)
    (
        lambda L: cnn.Conv(64, 128, 3, layout=L, rngs=nnx.Rngs(0)),
        lambda: torch.nn.Conv2d(64, 128, 3),
    ),
    (
        lambda L: cnn.Conv(64, 96, (5,), groups=4, layout=L, rngs=nnx.Rngs(1)),
        lambda: torch.nn.Conv1d(64, 96, 5, groups=4),
    ),
    (
        lambda L: cnn.Conv(16, 32, (3, 3, 3), layout=L, rngs=nnx.Rngs(2)),
        lambda: torch.nn.Conv3d(16, 32, 3),
    ),
    (
        lambda L: cnn.ConvTranspose(32, 128, 3, groups=2, layout=L, rngs=nnx.Rngs(3)),
        lambda: torch.nn.ConvTranspose2d(32, 128, 3, groups=2),
    ),
    (
        lambda L: cnn.ConvTranspose(256, 64, (2, 2), layout=L, rngs=nnx.Rngs(4)),
        lambda: torch.nn.ConvTranspose2d(256, 64, 2),
    ),
    (
        lambda L: cnn.DepthwiseConv(512, 5, depth_multiplier=2, layout=L, rngs=nnx.Rngs(5)),
        lambda: torch.nn.Conv2d(512, 1024, 5, groups=512),
    ),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", range(len(INIT_CASES)))
def test_init_matches_torch_bounds_and_shapes(case, layout):
    make, make_torch = INIT_CASES[case]
    layer, tm = make(layout), make_torch()
    bound = _torch_bound(tm)
    w = np.asarray(layer.kernel[...])
    to_torch = (
        convt_weight_to_torch if isinstance(layer, cnn.ConvTranspose) else conv_weight_to_torch
    )
    # Same parameter shapes as PyTorch's after the layout conversion.
    assert to_torch(w, layout).shape == tuple(tm.weight.shape)
    assert layer.bias[...].shape == tuple(tm.bias.shape)
    _check_uniform(w, bound)
    _check_uniform(layer.bias[...], bound, check_std=False)
    # PyTorch's own draw obeys the same bound, and has the same spread.
    tw = tm.weight.detach().numpy()
    assert np.abs(tw).max() <= bound * (1 + 1e-6)
    np.testing.assert_allclose(w.std(), tw.std(), rtol=0.05)


def test_separable_init_matches_torch_pair():
    sep = cnn.SeparableConv(256, 64, 3, depth_multiplier=2, rngs=nnx.Rngs(0))
    t_dw = torch.nn.Conv2d(256, 512, 3, groups=256, bias=False)
    t_pw = torch.nn.Conv2d(512, 64, 1)
    _check_uniform(sep.depthwise_kernel[...], _torch_bound(t_dw))
    _check_uniform(sep.pointwise_kernel[...], _torch_bound(t_pw))
    _check_uniform(sep.bias[...], _torch_bound(t_pw), check_std=False)
    assert conv_weight_to_torch(sep.depthwise_kernel[...], "channels_last").shape == tuple(
        t_dw.weight.shape
    )
    assert conv_weight_to_torch(sep.pointwise_kernel[...], "channels_last").shape == tuple(
        t_pw.weight.shape
    )


@pytest.mark.parametrize("a", [0.0, math.sqrt(5.0), 1.0])
def test_kaiming_uniform_bound_equals_torch_gain(a):
    from cnn_jax.nn._init import kaiming_uniform

    fan_in = 300
    # torch.nn.init.kaiming_uniform_: bound = gain(leaky_relu, a) * sqrt(3 / fan_in).
    bound = torch.nn.init.calculate_gain("leaky_relu", a) * math.sqrt(3.0 / fan_in)
    w = kaiming_uniform(fan_in, a)(jax.random.key(0), (100, fan_in), jnp.float32)
    _check_uniform(w, bound)
    tw = torch.nn.init.kaiming_uniform_(torch.empty(100, fan_in), a=a)
    assert tw.abs().max().item() <= bound * (1 + 1e-6)


def test_init_is_reproducible_and_custom_init_used():
    a = cnn.Conv(3, 4, 3, rngs=nnx.Rngs(7))
    b = cnn.Conv(3, 4, 3, rngs=nnx.Rngs(7))
    np.testing.assert_array_equal(np.asarray(a.kernel[...]), np.asarray(b.kernel[...]))
    c = cnn.Conv(
        3,
        4,
        3,
        kernel_init=nnx.initializers.zeros,
        bias_init=nnx.initializers.ones,
        rngs=nnx.Rngs(0),
    )
    assert not np.asarray(c.kernel[...]).any() and (np.asarray(c.bias[...]) == 1).all()
    assert cnn.Conv(3, 4, 3, use_bias=False, rngs=nnx.Rngs(0)).bias is None


# --- pooling and resampling layers ---------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pool_layers_equal_op_and_torch(layout, rng):
    x, x_cf = layer_input(rng, (2, 3, 7, 6), layout)
    xt = t(x_cf)
    xj = jnp.asarray(x)
    cases = [
        (
            cnn.MaxPool(3, 2, padding=1, layout=layout),
            lambda x: cj.max_pool(x, 3, 2, padding=1, layout=layout),
            F.max_pool2d(xt, 3, 2, padding=1),
        ),
        (
            cnn.MaxPool((2, 3), dilation=(2, 1), ceil_mode=True, layout=layout),
            lambda x: cj.max_pool(x, (2, 3), dilation=(2, 1), ceil_mode=True, layout=layout),
            F.max_pool2d(xt, (2, 3), dilation=(2, 1), ceil_mode=True),
        ),
        (
            cnn.MinPool(2, layout=layout),
            lambda x: cj.min_pool(x, 2, layout=layout),
            -F.max_pool2d(-xt, 2),
        ),
        (
            cnn.AvgPool(3, 2, padding=1, count_include_pad=False, layout=layout),
            lambda x: cj.avg_pool(x, 3, 2, padding=1, count_include_pad=False, layout=layout),
            F.avg_pool2d(xt, 3, 2, padding=1, count_include_pad=False),
        ),
        (
            cnn.AvgPool(2, divisor_override=3, ceil_mode=True, layout=layout),
            lambda x: cj.avg_pool(x, 2, divisor_override=3, ceil_mode=True, layout=layout),
            F.avg_pool2d(xt, 2, divisor_override=3, ceil_mode=True),
        ),
        (
            cnn.LpPool(2.0, (2, 2), layout=layout),
            lambda x: cj.lp_pool(x, 2.0, (2, 2), layout=layout),
            F.lp_pool2d(xt, 2.0, 2),
        ),
        (
            cnn.AdaptiveAvgPool((3, 4), layout=layout),
            lambda x: cj.adaptive_avg_pool(x, (3, 4), layout=layout),
            F.adaptive_avg_pool2d(xt, (3, 4)),
        ),
        (
            cnn.AdaptiveMaxPool((None, 4), layout=layout),
            lambda x: cj.adaptive_max_pool(x, (None, 4), layout=layout),
            F.adaptive_max_pool2d(xt, (None, 4)),
        ),
        (
            cnn.GlobalAvgPool(keepdims=True, layout=layout),
            lambda x: cj.global_avg_pool(x, keepdims=True, layout=layout),
            xt.mean(dim=(2, 3), keepdim=True),
        ),
    ]
    for layer, op_call, expected in cases:
        y = apply(layer, xj)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(jax.jit(op_call)(xj)))
        close(y, expected.numpy(), layout, atol=1e-5)
    # GlobalMaxPool without keepdims: (N, C) in both layouts.
    y = apply(cnn.GlobalMaxPool(layout=layout), xj)
    np.testing.assert_allclose(np.asarray(y), xt.amax(dim=(2, 3)).numpy())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_resample_layers_equal_op_and_torch(layout, rng):
    x, x_cf = layer_input(rng, (1, 8, 3, 4), layout)
    xt, xj = t(x_cf), jnp.asarray(x)
    cases = [
        (
            cnn.Upsample(2, layout=layout),
            lambda x: cj.upsample(x, 2, layout=layout),
            F.interpolate(xt, scale_factor=2, mode="nearest"),
        ),
        (
            cnn.Upsample(size=(5, 7), method="linear", align_corners=True, layout=layout),
            lambda x: cj.upsample(
                x, size=(5, 7), method="linear", align_corners=True, layout=layout
            ),
            F.interpolate(xt, size=(5, 7), mode="bilinear", align_corners=True),
        ),
        (
            cnn.Upsample(1.5, method="linear", layout=layout),
            lambda x: cj.upsample(x, 1.5, method="linear", layout=layout),
            F.interpolate(xt, scale_factor=1.5, mode="bilinear", align_corners=False),
        ),
        (
            cnn.PixelShuffle(2, layout=layout),
            lambda x: cj.pixel_shuffle(x, 2, layout=layout),
            F.pixel_shuffle(xt, 2),
        ),
    ]
    for layer, op_call, expected in cases:
        y = apply(layer, xj)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(jax.jit(op_call)(xj)))
        close(y, expected.numpy(), layout, atol=1e-5)
    x2, x2_cf = layer_input(rng, (1, 2, 4, 6), layout)
    y = apply(cnn.PixelUnshuffle(2, layout=layout), jnp.asarray(x2))
    np.testing.assert_array_equal(
        np.asarray(y),
        np.asarray(call_op(cj.pixel_unshuffle, x2, downscale_factor=2, layout=layout)),
    )
    close(y, F.pixel_unshuffle(t(x2_cf), 2).numpy(), layout)


def test_pool_layer_keeps_int_window_for_any_rank(rng):
    # An int window reads the rank from x, as the op: one layer pools 1-D and 3-D inputs.
    layer = cnn.MaxPool(2)
    x1 = rng.standard_normal((1, 6, 2)).astype(np.float32)
    x3 = rng.standard_normal((1, 4, 4, 4, 2)).astype(np.float32)
    close(apply(layer, jnp.asarray(x1)), F.max_pool1d(t(to_cf(x1)), 2).numpy(), "channels_last")
    close(apply(layer, jnp.asarray(x3)), F.max_pool3d(t(to_cf(x3)), 2).numpy(), "channels_last")


# --- receptive field specs -----------------------------------------------------------


def test_receptive_field_specs_and_model_walk():
    conv = cnn.Conv(3, 4, 3, padding=1, rngs=nnx.Rngs(0))
    assert conv.receptive_field_spec == ((3, 3), (1, 1), (1, 1), (1, 1))
    same = cnn.Conv(3, 4, (4, 5), dilation=(1, 2), padding="same", rngs=nnx.Rngs(0))
    # "same" reports (eff_k - 1) // 2: eff = (4, 9) -> (1, 4).
    assert same.receptive_field_spec[3] == (1, 4)
    pairs = cnn.Conv(3, 4, (3,), padding=((2, 0),), rngs=nnx.Rngs(0))
    assert pairs.receptive_field_spec == ((3,), (1,), (1,), (2,))
    assert cnn.MaxPool(3, 2, padding=1).receptive_field_spec == (3, 2, 1, 1)
    assert cnn.AvgPool((2, 2)).receptive_field_spec == ((2, 2), (2, 2), 1, (0, 0))
    assert cnn.ConvTranspose(3, 4, 2, rngs=nnx.Rngs(0)).receptive_field_spec is None

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = cnn.Conv(1, 2, 3, padding=1, rngs=rngs)
            self.conv2 = cnn.Conv(2, 2, 3, dilation=2, rngs=rngs)
            self.conv3 = cnn.Conv(2, 2, 3, stride=2, rngs=rngs)
            self.pool = cnn.MaxPool(2)

        def __call__(self, x):
            return self.pool(self.conv3(self.conv2(self.conv1(x))))

    # Hand-derived (r_{l-1} = s_l r_l + k_l - s_l, effective k = d (k - 1) + 1):
    # conv1 k3: r=3, j=1; conv2 eff 5: r=7, j=1; conv3 k3 s2: r=9, j=2; pool k2 s2: r=11, j=4.
    # start: conv1 (1 - 1) * 1 = 0; conv2 + 2 * 1; conv3 + 1 * 1; pool + 0.5 * 2 -> 4.
    rf = cj.receptive_field(Net(nnx.Rngs(0)))
    assert rf.size == (11, 11) and rf.jump == (4, 4) and rf.start == (4.0, 4.0)


# --- transformations and mixed precision ---------------------------------------------


def test_nnx_jit_and_grad_match_torch_autograd(rng):
    x, x_cf = layer_input(rng, (2, 3, 6, 6), "channels_last")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = cnn.Conv(3, 4, 3, padding=1, rngs=rngs)
            self.pool = cnn.MaxPool(2)
            self.up = cnn.ConvTranspose(4, 2, 2, stride=2, rngs=rngs)

        def __call__(self, x):
            return self.up(self.pool(jax.nn.relu(self.conv(x))))

    model = Net(nnx.Rngs(0))

    @nnx.jit
    def loss_and_grad(model, x):
        return nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)

    loss, grads = loss_and_grad(model, jnp.asarray(x))

    t_conv, t_up = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ConvTranspose2d(4, 2, 2, stride=2)
    with torch.no_grad():
        t_conv.weight.copy_(t(conv_weight_to_torch(model.conv.kernel[...], "channels_last")))
        t_conv.bias.copy_(t(model.conv.bias[...]))
        t_up.weight.copy_(t(convt_weight_to_torch(model.up.kernel[...], "channels_last")))
        t_up.bias.copy_(t(model.up.bias[...]))
    t_loss = (t_up(F.max_pool2d(torch.relu(t_conv(t(x_cf))), 2)) ** 2).mean()
    t_loss.backward()
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(
        conv_weight_to_torch(grads.conv.kernel[...], "channels_last"),
        t_conv.weight.grad.numpy(),
        atol=1e-5,
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        np.asarray(grads.conv.bias[...]), t_conv.bias.grad.numpy(), atol=1e-5, rtol=1e-4
    )
    np.testing.assert_allclose(
        convt_weight_to_torch(grads.up.kernel[...], "channels_last"),
        t_up.weight.grad.numpy(),
        atol=1e-5,
        rtol=1e-4,
    )

    # One SGD step through nnx.jit lowers the loss.
    @nnx.jit
    def step(model, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p, g: p - 0.5 * g, params, grads))
        return loss

    first = step(model, jnp.asarray(x))
    for _ in range(3):
        last = step(model, jnp.asarray(x))
    assert float(last) < float(first)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_compute_with_f32_params(layout, rng):
    x, _ = layer_input(rng, (1, 4, 6, 6), layout)
    layers = [
        cnn.Conv(4, 4, 3, padding=1, layout=layout, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
        cnn.ConvTranspose(4, 2, 2, stride=2, layout=layout, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
        cnn.DepthwiseConv(4, 3, layout=layout, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
        cnn.SeparableConv(4, 3, 3, layout=layout, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
    ]
    # The dtype handling is layout-independent: channels_first checks Conv only (speed).
    for layer in layers if layout == "channels_last" else layers[:1]:
        params = jax.tree.leaves(nnx.state(layer, nnx.Param))
        assert params and all(p.dtype == jnp.float32 for p in params)
        y = apply(layer, jnp.asarray(x))  # f32 input, bf16 compute
        assert y.dtype == jnp.bfloat16
        # Same values as the f32 computation, to bf16 accuracy.
        f32 = nnx.clone(layer)
        f32.dtype = None
        y32 = apply(f32, jnp.asarray(x))
        assert y32.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), atol=0.05, rtol=0.05)
        # Gradients w.r.t. the f32 params stay f32 (checked abstractly: no compile).
        graphdef, state = nnx.split(layer)

        def grads(state):
            m = nnx.merge(graphdef, state)
            return nnx.grad(lambda m: jnp.sum(m(jnp.asarray(x)).astype(jnp.float32)))(m)

        g = jax.eval_shape(grads, state)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g))
    # param_dtype=bf16 stores bf16 parameters; dtype=None then computes in the promoted dtype.
    layer = cnn.Conv(4, 4, 3, param_dtype=jnp.bfloat16, layout=layout, rngs=nnx.Rngs(0))
    assert layer.kernel[...].dtype == jnp.bfloat16
    assert apply(layer, jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


# --- every constructor error ---------------------------------------------------------

R = nnx.Rngs(0)

ERRORS = [
    # Conv
    (lambda: cnn.Conv(0, 4, 3, rngs=R), ValueError, r"Conv: in_features must be >= 1, got 0"),
    (lambda: cnn.Conv(2.0, 4, 3, rngs=R), TypeError, r"Conv: in_features must be an int, got 2.0"),
    (lambda: cnn.Conv(2, -1, 3, rngs=R), ValueError, r"Conv: out_features must be >= 1"),
    (lambda: cnn.Conv(2, 4, (3, 0), rngs=R), ValueError, r"Conv: kernel_size must be >= 1"),
    (lambda: cnn.Conv(2, 4, (), rngs=R), ValueError, r"Conv: kernel_size must have at least one"),
    (lambda: cnn.Conv(2, 4, "3", rngs=R), TypeError, r"Conv: kernel_size must be an int"),
    (lambda: cnn.Conv(2, 4, 3.0, rngs=R), TypeError, r"Conv: kernel_size must be an int"),
    (
        lambda: cnn.Conv(2, 4, (3, 3), stride=(1, 1, 1), rngs=R),
        ValueError,
        r"Conv: stride must be an int or a tuple of 2 ints",
    ),
    (lambda: cnn.Conv(2, 4, 3, stride=0, rngs=R), ValueError, r"Conv: stride must be >= 1"),
    (lambda: cnn.Conv(2, 4, 3, dilation=0, rngs=R), ValueError, r"Conv: dilation must be >= 1"),
    (
        lambda: cnn.Conv(3, 4, 3, groups=2, rngs=R),
        ValueError,
        r"Conv: in_features \(=3\) must be divisible by groups \(=2\)",
    ),
    (
        lambda: cnn.Conv(4, 3, 3, groups=2, rngs=R),
        ValueError,
        r"Conv: out_features \(=3\) must be divisible by groups \(=2\)",
    ),
    (lambda: cnn.Conv(4, 4, 3, groups=0, rngs=R), ValueError, r"Conv: groups must be >= 1"),
    (
        lambda: cnn.Conv(2, 4, 3, padding="half", rngs=R),
        ValueError,
        r"Conv: padding must be .* or one of \('valid', 'same', 'full', 'causal'\), got 'half'",
    ),
    (
        lambda: cnn.Conv(2, 4, 3, padding=-1, rngs=R),
        ValueError,
        r"Conv: padding must be non-negative",
    ),
    (
        lambda: cnn.Conv(2, 4, 3, padding=((1, 1),), rngs=R),
        ValueError,
        r"Conv: padding as \(low, high\) pairs must have one pair per spatial dim",
    ),
    (lambda: cnn.Conv(2, 4, 3, padding=1.5, rngs=R), TypeError, r"Conv: padding must be an int"),
    (
        lambda: cnn.Conv(2, 4, 3, padding="causal", rngs=R),
        ValueError,
        r"Conv: padding='causal' is only defined for 1-D",
    ),
    (
        lambda: cnn.Conv(2, 4, 3, padding_mode="zero", rngs=R),
        ValueError,
        r"Conv: padding_mode must be one of \('zeros', 'reflect', 'replicate', 'circular'\), got 'zero'",
    ),
    (lambda: cnn.Conv(2, 4, 3, layout="NHWC", rngs=R), ValueError, r"Conv: layout must be one of"),
    (
        lambda: cnn.Conv(2, 4, 3, use_bias=1, rngs=R),
        TypeError,
        r"Conv: use_bias must be a bool, got 1",
    ),
    (lambda: cnn.Conv(2, 4, 3, flip="yes", rngs=R), TypeError, r"Conv: flip must be a bool"),
    (
        lambda: cnn.Conv(2, 4, 3, dtype="float99", rngs=R),
        TypeError,
        r"Conv: dtype must be a dtype or None",
    ),
    (
        lambda: cnn.Conv(2, 4, 3, param_dtype=None, rngs=R),
        TypeError,
        r"Conv: param_dtype must be a dtype",
    ),
    (
        lambda: cnn.Conv(2, 4, 3, kernel_init=0.1, rngs=R),
        TypeError,
        r"Conv: kernel_init must be an initializer",
    ),
    (
        lambda: cnn.Conv(2, 4, 3, bias_init="zeros", rngs=R),
        TypeError,
        r"Conv: bias_init must be an initializer",
    ),
    # ConvTranspose
    (
        lambda: cnn.ConvTranspose(2, 4, 3, stride=2, output_padding=2, rngs=R),
        ValueError,
        r"ConvTranspose: output_padding must be smaller than stride or dilation",
    ),
    (
        lambda: cnn.ConvTranspose(2, 4, 3, output_padding=-1, rngs=R),
        ValueError,
        r"ConvTranspose: output_padding must be >= 0",
    ),
    (
        lambda: cnn.ConvTranspose(2, 4, 3, padding="same", rngs=R),
        ValueError,
        r"ConvTranspose: padding must be .* or one of \('valid',\), got 'same'",
    ),
    (
        lambda: cnn.ConvTranspose(2, 3, 3, groups=2, rngs=R),
        ValueError,
        r"ConvTranspose: out_features \(=3\) must be divisible by groups \(=2\)",
    ),
    (
        lambda: cnn.ConvTranspose(3, 4, 3, groups=2, rngs=R),
        ValueError,
        r"ConvTranspose: in_features \(=3\) must be divisible by groups",
    ),
    (
        lambda: cnn.ConvTranspose(0, 4, 3, rngs=R),
        ValueError,
        r"ConvTranspose: in_features must be >= 1",
    ),
    (
        lambda: cnn.ConvTranspose(2, 4, (2, 2), stride=(1,), rngs=R),
        ValueError,
        r"ConvTranspose: stride must be an int or a tuple of 2 ints",
    ),
    (
        lambda: cnn.ConvTranspose(2, 4, 3, layout="nchw", rngs=R),
        ValueError,
        r"ConvTranspose: layout must be one of",
    ),
    (
        lambda: cnn.ConvTranspose(2, 4, 3, use_bias=None, rngs=R),
        TypeError,
        r"ConvTranspose: use_bias must be a bool",
    ),
    (
        lambda: cnn.ConvTranspose(2, 4, 3, dtype="x", rngs=R),
        TypeError,
        r"ConvTranspose: dtype must be a dtype",
    ),
    (
        lambda: cnn.ConvTranspose(2, 4, 3, param_dtype="x", rngs=R),
        TypeError,
        r"ConvTranspose: param_dtype must be a dtype",
    ),
    (
        lambda: cnn.ConvTranspose(2, 4, 3, kernel_init=1, rngs=R),
        TypeError,
        r"ConvTranspose: kernel_init must be",
    ),
    (
        lambda: cnn.ConvTranspose(2, 4, 3, bias_init=1, rngs=R),
        TypeError,
        r"ConvTranspose: bias_init must be",
    ),
    # DepthwiseConv / SeparableConv
    (
        lambda: cnn.DepthwiseConv(4, 3, depth_multiplier=0, rngs=R),
        ValueError,
        r"DepthwiseConv: depth_multiplier must be >= 1, got 0",
    ),
    (
        lambda: cnn.DepthwiseConv(0, 3, rngs=R),
        ValueError,
        r"DepthwiseConv: in_features must be >= 1",
    ),
    (
        lambda: cnn.DepthwiseConv(4, 3, padding_mode="wrap", rngs=R),
        ValueError,
        r"DepthwiseConv: padding_mode must be",
    ),
    (
        lambda: cnn.SeparableConv(4, 8, 3, depth_multiplier=1.5, rngs=R),
        TypeError,
        r"SeparableConv: depth_multiplier must be an int",
    ),
    (
        lambda: cnn.SeparableConv(4, 0, 3, rngs=R),
        ValueError,
        r"SeparableConv: out_features must be >= 1",
    ),
    (
        lambda: cnn.SeparableConv(4, 8, 3, padding="nope", rngs=R),
        ValueError,
        r"SeparableConv: padding must be",
    ),
    # Pools
    (lambda: cnn.MaxPool(0), ValueError, r"MaxPool: window must be >= 1"),
    (lambda: cnn.MaxPool(2.0), TypeError, r"MaxPool: window must be an int"),
    (lambda: cnn.MaxPool(2, 0), ValueError, r"MaxPool: stride must be >= 1"),
    (
        lambda: cnn.MaxPool((2, 2), (1, 1, 1)),
        ValueError,
        r"MaxPool: stride must be an int or a tuple of 2 ints",
    ),
    (
        lambda: cnn.MaxPool(3, padding=2),
        ValueError,
        r"MaxPool: padding must be at most half the window \(window // 2 = \(1,\)\) in every dim",
    ),
    (
        lambda: cnn.MaxPool(3, padding="causal"),
        ValueError,
        r"MaxPool: padding must be .* or one of \('valid', 'same', 'full'\), got 'causal'",
    ),
    (
        lambda: cnn.MaxPool(3, padding=((1, -1),)),
        ValueError,
        r"MaxPool: padding must be non-negative",
    ),
    (lambda: cnn.MaxPool(3, dilation=0), ValueError, r"MaxPool: dilation must be >= 1"),
    (lambda: cnn.MaxPool(3, ceil_mode="yes"), TypeError, r"MaxPool: ceil_mode must be a bool"),
    (
        lambda: cnn.MaxPool(3, ceil_mode="no"),
        TypeError,
        r"MaxPool: ceil_mode must be a bool, got 'no'",
    ),
    (lambda: cnn.MinPool(3, ceil_mode=1), TypeError, r"MinPool: ceil_mode must be a bool, got 1"),
    (
        lambda: cnn.AvgPool(2, ceil_mode=None),
        TypeError,
        r"AvgPool: ceil_mode must be a bool, got None",
    ),
    (
        lambda: cnn.LpPool(2, 2, ceil_mode="False"),
        TypeError,
        r"LpPool: ceil_mode must be a bool, got 'False'",
    ),
    (lambda: cnn.MaxPool(3, layout="cl"), ValueError, r"MaxPool: layout must be one of"),
    (
        lambda: cnn.MinPool((2, 4), padding=(1, 3)),
        ValueError,
        r"MinPool: padding must be at most half the window",
    ),
    (
        lambda: cnn.AvgPool(2, padding=2),
        ValueError,
        r"AvgPool: padding must be at most half the window",
    ),
    (
        lambda: cnn.AvgPool(2, count_include_pad=0),
        TypeError,
        r"AvgPool: count_include_pad must be a bool",
    ),
    (
        lambda: cnn.AvgPool(2, divisor_override=0),
        ValueError,
        r"AvgPool: divisor_override must be >= 1",
    ),
    (
        lambda: cnn.AvgPool(2, divisor_override=1.5),
        TypeError,
        r"AvgPool: divisor_override must be an int",
    ),
    (lambda: cnn.LpPool(0, 2), ValueError, r"LpPool: p must be > 0, got 0"),
    (lambda: cnn.LpPool("2", 2), TypeError, r"LpPool: p must be a number, got '2'"),
    (lambda: cnn.LpPool(2, (2, 0)), ValueError, r"LpPool: window must be >= 1"),
    (
        lambda: cnn.AdaptiveAvgPool(0),
        ValueError,
        r"AdaptiveAvgPool: output_size must be >= 1, got 0",
    ),
    (lambda: cnn.AdaptiveAvgPool((2, 0)), ValueError, r"AdaptiveAvgPool: output_size must be >= 1"),
    (
        lambda: cnn.AdaptiveMaxPool(()),
        ValueError,
        r"AdaptiveMaxPool: output_size must have at least one entry",
    ),
    (lambda: cnn.AdaptiveMaxPool(2.5), TypeError, r"AdaptiveMaxPool: output_size must be an int"),
    (
        lambda: cnn.AdaptiveMaxPool(2, layout="x"),
        ValueError,
        r"AdaptiveMaxPool: layout must be one of",
    ),
    (
        lambda: cnn.AdaptiveAvgPool(2, layout="x"),
        ValueError,
        r"AdaptiveAvgPool: layout must be one of",
    ),
    (lambda: cnn.GlobalAvgPool(keepdims=1), TypeError, r"GlobalAvgPool: keepdims must be a bool"),
    (lambda: cnn.GlobalMaxPool(layout="x"), ValueError, r"GlobalMaxPool: layout must be one of"),
    (
        lambda: cnn.GlobalMaxPool(keepdims="no"),
        TypeError,
        r"GlobalMaxPool: keepdims must be a bool",
    ),
    (lambda: cnn.GlobalAvgPool(layout=None), ValueError, r"GlobalAvgPool: layout must be one of"),
    # Resampling
    (
        lambda: cnn.Upsample(),
        ValueError,
        r"Upsample: exactly one of scale_factor and size must be given",
    ),
    (
        lambda: cnn.Upsample(2, size=4),
        ValueError,
        r"Upsample: exactly one of scale_factor and size",
    ),
    (
        lambda: cnn.Upsample(0),
        ValueError,
        r"Upsample: scale_factor must be > 0 in every dim, got 0",
    ),
    (
        lambda: cnn.Upsample((2, -1.0)),
        ValueError,
        r"Upsample: scale_factor must be > 0 in every dim",
    ),
    (lambda: cnn.Upsample(()), ValueError, r"Upsample: scale_factor must have at least one entry"),
    (lambda: cnn.Upsample("2"), TypeError, r"Upsample: scale_factor must be a number"),
    (lambda: cnn.Upsample(size=0), ValueError, r"Upsample: size must be >= 1, got 0"),
    (lambda: cnn.Upsample(size=(4, 0)), ValueError, r"Upsample: size must be >= 1"),
    (
        lambda: cnn.Upsample(2, method="cubic"),
        ValueError,
        r"Upsample: method must be one of \('nearest', 'linear'\), got 'cubic'",
    ),
    (
        lambda: cnn.Upsample(2, align_corners=True),
        ValueError,
        r"Upsample: align_corners must be False for method='nearest'",
    ),
    (
        lambda: cnn.Upsample(2, method="linear", align_corners=1),
        TypeError,
        r"Upsample: align_corners must be a bool",
    ),
    (lambda: cnn.Upsample(2, layout="x"), ValueError, r"Upsample: layout must be one of"),
    (lambda: cnn.PixelShuffle(0), ValueError, r"PixelShuffle: upscale_factor must be >= 1, got 0"),
    (lambda: cnn.PixelShuffle(2.0), TypeError, r"PixelShuffle: upscale_factor must be an int"),
    (lambda: cnn.PixelShuffle(2, layout="x"), ValueError, r"PixelShuffle: layout must be one of"),
    (lambda: cnn.PixelUnshuffle(-2), ValueError, r"PixelUnshuffle: downscale_factor must be >= 1"),
    (
        lambda: cnn.PixelUnshuffle(2, layout="x"),
        ValueError,
        r"PixelUnshuffle: layout must be one of",
    ),
]


@pytest.mark.parametrize("make,exc,match", ERRORS, ids=[f"err{i}" for i in range(len(ERRORS))])
def test_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_layer_flags_take_numpy_bools_and_store_python_bools():
    # numpy bools (from a config array, np.all(...)) are bools; the layers keep Python's.
    R = nnx.Rngs(0)
    layers = [
        (cnn.MaxPool(2, ceil_mode=np.True_), "ceil_mode"),
        (cnn.AvgPool(2, count_include_pad=np.bool_(False)), "count_include_pad"),
        (cnn.LpPool(2, 2, ceil_mode=np.True_), "ceil_mode"),
        (cnn.GlobalAvgPool(keepdims=np.True_), "keepdims"),
        (cnn.Upsample(2, method="linear", align_corners=np.True_), "align_corners"),
        (cnn.Conv(2, 4, 3, use_bias=np.False_, rngs=R), "use_bias"),
        (cnn.StochasticDepth(0.5, deterministic=np.True_), "deterministic"),
    ]
    for layer, flag in layers:
        value = getattr(layer, flag)
        assert type(value) is bool, (type(layer).__name__, flag)
    x = jnp.ones((1, 5, 5, 2))
    assert cnn.MaxPool(2, ceil_mode=np.True_)(x).shape == cj.max_pool(x, 2, ceil_mode=True).shape
    with pytest.raises(
        TypeError, match=r"StochasticDepth: deterministic must be a bool, got 'yes'"
    ):
        cnn.StochasticDepth(0.5, deterministic="yes")


def test_public_names_are_reexported():
    expected = {
        "Conv",
        "ConvTranspose",
        "DepthwiseConv",
        "SeparableConv",
        "MaxPool",
        "MinPool",
        "AvgPool",
        "LpPool",
        "AdaptiveAvgPool",
        "AdaptiveMaxPool",
        "GlobalAvgPool",
        "GlobalMaxPool",
        "Upsample",
        "PixelShuffle",
        "PixelUnshuffle",
    }
    assert expected <= set(cnn.__all__)
    assert all(getattr(cnn, name).__module__.startswith("cnn_jax.nn._") for name in cnn.__all__)
