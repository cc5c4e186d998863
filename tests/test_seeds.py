"""The worked convolution examples of the seed tutorials (shared/seeds), held by cnn_jax."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal
import torch

import cnn_jax as cj

# seed 000: f is 12 long with a +1/-1 step at 8/9; g = [0, 1, -1, 0]
F_SIGNAL = np.zeros(12, np.float32)
F_SIGNAL[8], F_SIGNAL[9] = 1.0, -1.0
G_KERNEL = np.array([0.0, 1.0, -1.0, 0.0], np.float32)


def conv1d(x, k, **kw):
    """1-D single-channel cj.conv on plain vectors (channels_first, unbatched)."""
    return np.asarray(cj.conv(x[None], k[None, None], layout="channels_first", **kw))[0]


def test_numpy_convolve_vs_pytorch_cross_correlation():
    expected_np = np.zeros(15)
    expected_np[9:12] = [1, -2, 1]
    np.testing.assert_array_equal(np.convolve(F_SIGNAL, G_KERNEL), expected_np)
    # cj.conv with flip=True and full padding is np.convolve ...
    np.testing.assert_array_equal(
        conv1d(F_SIGNAL, G_KERNEL, padding="full", flip=True), expected_np
    )
    # ... and without flip it is PyTorch's cross-correlation.
    torch_out = torch.nn.functional.conv1d(
        torch.tensor(F_SIGNAL)[None, None], torch.tensor(G_KERNEL)[None, None]
    )[0, 0].numpy()
    expected_torch = [0, 0, 0, 0, 0, 0, -1, 2, -1]
    np.testing.assert_array_equal(torch_out, expected_torch)
    np.testing.assert_array_equal(conv1d(F_SIGNAL, G_KERNEL), expected_torch)


def test_output_sizes_26_30_15():
    image, kernel = jnp.ones((28, 28, 1)), jnp.ones((3, 3, 1, 1))  # unbatched HWC
    y = cj.conv(image, kernel)
    assert y.shape == (26, 26, 1)
    assert bool(jnp.all(y == 9.0))
    assert cj.conv(image, kernel, padding=2).shape == (30, 30, 1)
    assert cj.conv(image, kernel, padding=2, stride=2).shape == (15, 15, 1)
    assert cj.conv_output_shape((28, 28), 3) == (26, 26)
    assert cj.conv_output_shape((28, 28), 3, padding=2) == (30, 30)
    assert cj.conv_output_shape((28, 28), 3, padding=2, stride=2) == (15, 15)


def test_valid_same_full_1d():
    x, k = np.array([1.0, 2.0, 3.0], np.float32), np.ones(3, np.float32)
    np.testing.assert_array_equal(conv1d(x, k, padding="valid"), [6])
    np.testing.assert_array_equal(conv1d(x, k, padding="same"), [3, 6, 5])
    np.testing.assert_array_equal(conv1d(x, k, padding="full"), [1, 3, 6, 5, 3])


def test_corr2d_example():
    x = np.arange(9, dtype=np.float32).reshape(3, 3)
    k = np.array([[0, 1], [2, 3]], np.float32)
    y = cj.conv(x[..., None], k[..., None, None])[..., 0]
    np.testing.assert_array_equal(np.asarray(y), [[19, 25], [37, 43]])


def _edge_image():
    x = np.ones((6, 8), np.float32)
    x[:, 2:6] = 0
    return x


def test_edge_detection_kernel():
    y = cj.conv(_edge_image()[..., None], np.array([[1.0, -1.0]], np.float32)[..., None, None])
    row = [0, 1, 0, 0, 0, -1, 0]
    np.testing.assert_array_equal(np.asarray(y)[..., 0], np.tile(row, (6, 1)))


def test_learn_edge_kernel_back_by_gradient_descent():
    x = _edge_image()
    y = np.asarray(cj.conv(x[..., None], np.array([[1.0, -1.0]], np.float32)[..., None, None]))
    k0 = np.array([[0.3, 0.2]], np.float32)  # a fixed start instead of a random one

    def loss_fn(k):
        return jnp.sum((cj.conv(x[..., None], k[..., None, None]) - y) ** 2)

    step = jax.jit(jax.value_and_grad(loss_fn))
    k, losses = jnp.asarray(k0), []
    for _ in range(10):
        loss, g = step(k)
        k = k - 0.03 * g
        losses.append(float(loss))
    # PyTorch, the seed's own code, from the same start, as the oracle
    conv = torch.nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    conv.weight.data[:] = torch.tensor(k0).reshape(1, 1, 1, 2)
    xt, yt = torch.tensor(x).reshape(1, 1, 6, 8), torch.tensor(y[..., 0]).reshape(1, 1, 6, 7)
    torch_losses = []
    for _ in range(10):
        conv.zero_grad()
        loss = ((conv(xt) - yt) ** 2).sum()
        loss.backward()
        conv.weight.data[:] -= 0.03 * conv.weight.grad
        torch_losses.append(float(loss.detach()))
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-4, atol=1e-5)
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.05 * losses[0]
    np.testing.assert_allclose(np.asarray(k)[0], [1.0, -1.0], atol=0.15)


def test_stride_is_subsampling():
    y1 = conv1d(F_SIGNAL, G_KERNEL)
    y2 = conv1d(F_SIGNAL, G_KERNEL, stride=2)
    np.testing.assert_array_equal(y2, y1[::2])
    np.testing.assert_array_equal(y2, [0, 0, 0, -1, -1])


def test_transposed_conv_example():
    down = conv1d(F_SIGNAL, G_KERNEL, stride=2)
    up = cj.conv_transpose(down[None], G_KERNEL[None, None], stride=2, layout="channels_first")[0]
    assert up.shape == F_SIGNAL.shape
    np.testing.assert_array_equal(np.asarray(up), [0, 0, 0, 0, 0, 0, 0, -1, 1, -1, 1, 0])
    ref = torch.nn.functional.conv_transpose1d(
        torch.tensor(down)[None, None], torch.tensor(G_KERNEL)[None, None], stride=2
    )
    np.testing.assert_array_equal(np.asarray(up), ref[0, 0].numpy())


def test_backprop_formulas_kernel_grad_is_correlation_input_grad_is_full_convolution(rng):
    for padding in (0, 1):
        x = rng.standard_normal((7, 6)).astype(np.float32)
        k = rng.standard_normal((3, 2)).astype(np.float32)
        xp = np.pad(x, padding)
        dy = rng.standard_normal((xp.shape[0] - 2, xp.shape[1] - 1)).astype(np.float32)
        # dK = x (padded) cross-correlated with dy; dX = dy fully convolved with K, cropped
        dk_ref = scipy.signal.correlate2d(xp, dy, mode="valid")
        dx_ref = scipy.signal.convolve2d(dy, k, mode="full")
        if padding:
            dx_ref = dx_ref[padding:-padding, padding:-padding]
        dk = cj.conv_kernel_grad(x[..., None], dy[..., None], (3, 2, 1, 1), padding=padding)
        dx = cj.conv_input_grad(
            dy[..., None], k[..., None, None], x[..., None].shape, padding=padding
        )
        np.testing.assert_allclose(np.asarray(dk)[..., 0, 0], dk_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(dx)[..., 0], dx_ref, rtol=1e-5, atol=1e-5)
        # the bias gradient is the sum of dy over the output positions
        b_grad = jax.grad(
            lambda b: jnp.sum(
                cj.conv(x[..., None], k[..., None, None], b, padding=padding) * dy[..., None]
            )
        )(jnp.zeros(1))
        np.testing.assert_allclose(np.asarray(b_grad), [dy.sum()], rtol=1e-5)
