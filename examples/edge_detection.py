"""Learn an edge-detection kernel back from its output, with cnn_jax.conv and jax.grad.

The worked example of the d2l-style CNN tutorial: a 6x8 image with a dark band, the
vertical-edge kernel [[1, -1]], and a 1x2 kernel learned from the edge map by
gradient descent on the squared error.

    python examples/edge_detection.py
"""

import jax
import jax.numpy as jnp

import cnn_jax as cj


def main():
    x = jnp.ones((6, 8)).at[:, 2:6].set(0.0)
    edge = jnp.array([[1.0, -1.0]])
    # Unbatched channels_first input (C, H, W) and an OIHW kernel, as in PyTorch.
    y = cj.conv(x[None], edge[None, None], layout="channels_first")
    print("edge map (1 = white-to-black, -1 = black-to-white):")
    print(y[0])

    def loss(kernel):
        y_hat = cj.conv(x[None], kernel, layout="channels_first")
        return jnp.sum((y_hat - y) ** 2)

    grad = jax.jit(jax.value_and_grad(loss))
    kernel = jax.random.normal(jax.random.key(0), (1, 1, 1, 2))
    for step in range(1, 11):
        value, g = grad(kernel)
        kernel = kernel - 0.03 * g
        if step % 2 == 0:
            print(f"step {step}, loss {float(value):.3f}")
    print("learned kernel:", kernel.reshape(-1))


if __name__ == "__main__":
    main()
