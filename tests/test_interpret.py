"""cnn_jax.interpret against hand computations, the methods' axioms and analytic ERFs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cnn_jax as cj
from cnn_jax.interpret import (
    effective_receptive_field,
    features,
    grad_cam,
    grad_cam_plus_plus,
    integrated_gradients,
    layer_names,
    saliency,
    smooth_grad,
)


class _Tiny(nnx.Module):
    """conv 3x3 (1 -> 2) - ReLU - global average pool - Linear(2, 3)."""

    def __init__(self, rngs):
        self.conv = cj.nn.Conv(1, 2, 3, padding=1, rngs=rngs)
        self.pool = cj.nn.GlobalAvgPool()
        self.fc = nnx.Linear(2, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(self.pool(jax.nn.relu(self.conv(x))))


@pytest.fixture(scope="module")
def tiny():
    return _Tiny(nnx.Rngs(jax.random.key(0, impl="rbg")))


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 1)), jnp.float32)


def _hand_activations_and_gradients(model, x, target):
    """A = conv(x); score = sum_k W[k, c] mean_ij relu(A_k) + b: dS/dA = W[k, c] / hw [A > 0]."""
    a = np.asarray(model.conv(x))
    w = np.asarray(model.fc.kernel[...])[:, target]  # (K,)
    g = w[None, None, None, :] / (6 * 6) * (a > 0)
    return a, g


def test_grad_cam_equals_hand_computation(tiny, x):
    a, g = _hand_activations_and_gradients(tiny, x, 2)
    expected = np.maximum(np.einsum("nhwk,nk->nhw", a, g.mean(axis=(1, 2))), 0)
    cam = grad_cam(tiny, x, 2, "conv", upsample=False)
    np.testing.assert_allclose(np.asarray(cam), expected, rtol=1e-5, atol=1e-7)
    assert expected.max() > 0
    # Same size as the input here, so bilinear upsampling is the identity.
    np.testing.assert_allclose(
        np.asarray(grad_cam(tiny, x, 2, "conv")), expected, rtol=1e-5, atol=1e-7
    )


def test_grad_cam_plus_plus_equals_hand_computation(tiny, x):
    a, g = _hand_activations_and_gradients(tiny, x, 0)
    denom = 2 * g**2 + a.sum(axis=(1, 2), keepdims=True) * g**3
    alpha = np.where(denom != 0, g**2 / np.where(denom != 0, denom, 1), 0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    expected = np.maximum(np.einsum("nhwk,nk->nhw", a, weights), 0)
    cam = grad_cam_plus_plus(tiny, x, 0, "conv", upsample=False)
    np.testing.assert_allclose(np.asarray(cam), expected, rtol=1e-4, atol=1e-7)


def test_per_example_targets_jit_and_vmap(tiny, x):
    targets = jnp.array([1, 2])
    batch = grad_cam(tiny, x, targets, "conv")
    one_by_one = [grad_cam(tiny, x[i : i + 1], int(t), "conv")[0] for i, t in enumerate(targets)]
    np.testing.assert_allclose(np.asarray(batch), np.stack(one_by_one), rtol=1e-5, atol=1e-7)
    jitted = jax.jit(lambda x, t: grad_cam(tiny, x, t, "conv"))(x, targets)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(batch), rtol=1e-5, atol=1e-7)
    mapped = jax.vmap(lambda xi, t: grad_cam(tiny, xi[None], t, "conv")[0])(x, targets)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(batch), rtol=1e-5, atol=1e-7)
    sal = jax.vmap(lambda xi, t: saliency(tiny, xi[None], t)[0])(x, targets)
    np.testing.assert_allclose(
        np.asarray(sal), np.asarray(saliency(tiny, x, targets)), rtol=1e-5, atol=1e-7
    )


def test_saliency_is_the_input_gradient(tiny, x):
    expected = jax.grad(lambda x: tiny(x)[:, 1].sum())(x)
    np.testing.assert_allclose(np.asarray(saliency(tiny, x, 1)), np.asarray(expected), rtol=1e-6)
    # A callable target reduces any output to per-example scores.
    np.testing.assert_allclose(
        np.asarray(saliency(tiny, x, lambda out: out[:, 1])), np.asarray(expected), rtol=1e-6
    )


def test_smooth_grad_averages_noisy_gradients(tiny, x):
    key = jax.random.key(3, impl="rbg")
    sg = smooth_grad(tiny, x, 0, key=key, num_samples=4, noise_level=0.1)
    sigma = 0.1 * (x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3), keepdims=True))
    noise = jax.random.normal(key, (4, *x.shape))
    expected = np.mean([np.asarray(saliency(tiny, x + sigma * n, 0)) for n in noise], axis=0)
    np.testing.assert_allclose(np.asarray(sg), expected, rtol=1e-5, atol=1e-8)
    assert not np.allclose(expected, np.asarray(saliency(tiny, x, 0)))
    zero_noise = smooth_grad(tiny, x, 0, key=key, num_samples=4, noise_level=0.0)
    np.testing.assert_allclose(np.asarray(zero_noise), np.asarray(saliency(tiny, x, 0)), rtol=1e-6)


def test_integrated_gradients_completeness():
    # Two conv-ReLU layers, a strided max pool and a dense head: a piecewise-linear
    # score with many kinks along the path, where the quadrature has to work.
    rngs = nnx.Rngs(jax.random.key(1, impl="rbg"))
    model = nnx.Sequential(
        cj.nn.Conv(1, 4, 3, padding=1, rngs=rngs),
        jax.nn.relu,
        cj.nn.MaxPool(2),
        cj.nn.Conv(4, 4, 3, padding=1, rngs=rngs),
        jax.nn.relu,
        cj.nn.GlobalAvgPool(),
        nnx.Linear(4, 3, rngs=rngs),
    )
    x = jnp.asarray(np.random.default_rng(1).uniform(-3, 3, (2, 8, 8, 1)), jnp.float32)
    baseline = jnp.full_like(x, 0.5)
    attr = integrated_gradients(model, x, 2, baseline=baseline, steps=256, batch_size=64)
    assert attr.shape == x.shape
    diff = np.asarray(model(x)[:, 2] - model(baseline)[:, 2])
    total = np.asarray(attr.sum(axis=(1, 2, 3)))
    assert np.all(np.abs(diff) > 1e-2), diff
    np.testing.assert_allclose(total, diff, rtol=0.01)
    # The default black-image baseline, in one batch of path points.
    attr0 = integrated_gradients(model, x, 2, steps=256, batch_size=None)
    np.testing.assert_allclose(
        np.asarray(attr0.sum(axis=(1, 2, 3))),
        np.asarray(model(x)[:, 2] - model(jnp.zeros_like(x))[:, 2]),
        rtol=0.01,
    )


def _ones_conv_stack(n):
    ones = nnx.initializers.ones
    return nnx.Sequential(
        *[
            cj.nn.Conv(1, 1, 3, padding=1, use_bias=False, kernel_init=ones, rngs=nnx.Rngs(0))
            for _ in range(n)
        ]
    )


@pytest.mark.parametrize("n", [1, 3])
def test_effective_receptive_field_of_constant_3x3_stack(n):
    # With all-ones 3x3 kernels the centre unit is the n-fold sum over 3x3 windows, so
    # d out / d x[i, j] = c[i] c[j] with c the coefficients of (1 + z + z**2)**n on
    # 2n + 1 pixels around the centre: the theoretical field, but peaked (Luo et al.).
    size = 11
    model = _ones_conv_stack(n)
    erf = np.asarray(effective_receptive_field(model, (size, size, 1), num_samples=2))
    c = np.array(np.polynomial.polynomial.polypow([1, 1, 1], n))
    expected = np.zeros((size, size))
    lo = size // 2 - n
    expected[lo : lo + 2 * n + 1, lo : lo + 2 * n + 1] = np.outer(c, c)
    np.testing.assert_allclose(erf, expected, rtol=1e-6)
    assert cj.receptive_field(model).size == (2 * n + 1,) * 2
    assert expected.sum() == 9**n


def test_effective_receptive_field_of_a_layer_lies_inside_the_theoretical_one():
    model = cj.models.LeNet5(10, in_channels=1, rngs=nnx.Rngs(jax.random.key(2, impl="rbg")))
    erf = np.asarray(effective_receptive_field(model, (32, 32, 1), layer="conv2", num_samples=4))
    # conv2's output is 10x10; its centre unit (5, 5) reads pool1 rows 5..9, conv1 rows
    # 10..19 and input rows 10..23: the theoretical field of 14 pixels.
    assert cj.summary(model, (32, 32, 1))["conv2"].receptive_field == ((14, 14), (2, 2))
    inside = np.zeros_like(erf, bool)
    inside[10:24, 10:24] = True
    assert erf[~inside].max() == 0 and (erf[inside] > 0).mean() > 0.5
    assert erf[10:24, 10].max() > 0 and erf[10:24, 23].max() > 0  # it reaches both edges


def test_features_and_layer_names():
    model = cj.models.LeNet5(10, in_channels=1, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    names = layer_names(model)
    assert names == ["conv1", "conv2", "fc1", "fc2", "fc3", "pool1", "pool2"]  # graph order
    x = jnp.ones((2, 32, 32, 1))
    acts = features(model, x, ["conv1", "fc1"])
    np.testing.assert_allclose(np.asarray(acts["conv1"]), np.asarray(model.conv1(x)), rtol=1e-6)
    assert acts["fc1"].shape == (2, 120)
    assert set(features(model, x, "pool2")) == {"pool2"}
    # Nested names, with nnx.Sequential items numbered as in PyTorch.
    resnet = nnx.eval_shape(lambda: cj.models.ResNet18(10, rngs=nnx.Rngs(0)))
    assert {"layer4.1", "layer4.1.conv2", "layer2.0.downsample", "layer2.0.downsample.0"} <= set(
        layer_names(resnet)
    )
    assert "layer4" not in layer_names(resnet)  # a list of blocks, never called itself


def test_the_model_is_left_unchanged(tiny, x):
    before = jax.tree.map(np.asarray, nnx.state(tiny))
    grad_cam(tiny, x, 0, "conv")
    features(tiny, x, "conv")
    assert isinstance(tiny.conv, cj.nn.Conv)
    after = jax.tree.map(np.asarray, nnx.state(tiny))
    jax.tree.map(np.testing.assert_array_equal, before, after)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda m, x: grad_cam(m, x, 0, "nope"),
            ValueError,
            r"grad_cam: layer must name a sub-module of the model \(one of 'conv', 'fc', 'pool', "
            r"\.\.\.; see cnn_jax.interpret.layer_names\), got 'nope'",
        ),
        (
            lambda m, x: grad_cam(m, x, 0, "fc"),
            ValueError,
            r"grad_cam: layer 'fc' must output \(N, h, w, C\) feature maps, got shape \(2, 3\)",
        ),
        (
            lambda m, x: grad_cam(m, x, 0, 3),
            TypeError,
            r"grad_cam: layer must be a layer name or a sequence of names, got 3",
        ),
        (
            lambda m, x: saliency(m, x, 1.5),
            TypeError,
            r"saliency: target must be a class index, an \(N,\) array of them or a callable, got 1.5",
        ),
        (
            lambda m, x: saliency(m, x, jnp.array([0, 1, 2])),
            ValueError,
            r"saliency: target must be an int or an int array of shape \(2,\), got int32 array of "
            r"shape \(3,\)",
        ),
        (
            lambda m, x: saliency(m, x, lambda out: out),
            ValueError,
            r"saliency: target\(output\) must return one score per example",
        ),
        (
            lambda m, x: saliency(3, x, 0),
            TypeError,
            r"saliency: model must be an nnx.Module, got int",
        ),
        (
            lambda m, x: integrated_gradients(m, x, 0, steps=0),
            ValueError,
            r"integrated_gradients: steps must be an int >= 1, got 0",
        ),
        (
            lambda m, x: smooth_grad(m, x, 0, key=jax.random.key(0), num_samples=0),
            ValueError,
            r"smooth_grad: num_samples must be an int >= 1, got 0",
        ),
        (
            lambda m, x: effective_receptive_field(m, (6, 6, 1)),
            ValueError,
            r"effective_receptive_field: the model's output must be a \(N, h, w, C\) feature map "
            r"\(pass layer= for a classifier\), got shape \(1, 3\)",
        ),
        (
            lambda m, x: effective_receptive_field(m, (6, 6)),
            ValueError,
            r"effective_receptive_field: input_shape must be \(H, W, C\) of positive ints, got "
            r"\(6, 6\)",
        ),
        (
            lambda m, x: features(m, x, []),
            TypeError,
            r"features: layer must be a layer name or a sequence of names, got \[\]",
        ),
    ],
)
def test_errors(tiny, x, call, exc, match):
    with pytest.raises(exc, match=match):
        call(tiny, x)


def test_public_surface():
    assert cj.interpret.grad_cam is grad_cam and "interpret" in cj.__all__
    assert set(cj.interpret.__all__) == {
        "effective_receptive_field",
        "features",
        "grad_cam",
        "grad_cam_plus_plus",
        "integrated_gradients",
        "layer_names",
        "saliency",
        "smooth_grad",
    }
