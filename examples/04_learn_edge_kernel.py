"""Learning an edge-detection kernel back from its output, by gradient descent with Optax.

The last seed's exercise (d2l.ai's "Learning a Kernel"): a 6x8 image with a black band
(columns 2-5), the vertical-edge kernel K = [1, -1], and its edge map Y = X * K. A
1x2 kernel starting from PyTorch-style random values is fitted to Y with the squared loss
sum((X * W - Y)**2), plain SGD with learning rate 0.03, 10 steps. The loss falls by
orders of magnitude and W approaches [1, -1]: the network recovers the filter from
examples of what it does.

    python examples/04_learn_edge_kernel.py [--quick] [--out DIR]
"""

import _shared
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import cnn_jax as cj


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "04_learn_edge_kernel", steps=10, lr=0.03)
    x = jnp.ones((6, 8)).at[:, 2:6].set(0.0)[None, :, :, None]  # (N, H, W, C)
    edge = jnp.array([[1.0, -1.0]])[:, :, None, None]  # (kH, kW, C_in, C_out)
    y = cj.conv(x, edge)  # 1 = white-to-black, -1 = black-to-white
    print("edge map:\n", np.asarray(y[0, :, :, 0]))

    def loss_fn(kernel):
        return jnp.sum((cj.conv(x, kernel) - y) ** 2)

    # The seed's nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False): PyTorch's default init.
    kernel = cj.nn.Conv(1, 1, (1, 2), use_bias=False, rngs=nnx.Rngs(0)).kernel[...]
    optimizer = optax.sgd(args.lr)
    state = optimizer.init(kernel)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    losses, kernels = [], [np.asarray(kernel).ravel()]
    for step in range(1, args.steps + 1):
        loss, grad = grad_fn(kernel)
        updates, state = optimizer.update(grad, state)
        kernel = optax.apply_updates(kernel, updates)
        losses.append(float(loss))
        kernels.append(np.asarray(kernel).ravel())
        if step % 2 == 0:
            print(f"step {step:2d}  loss {float(loss):.4f}")
    learned = np.asarray(kernel).ravel()
    print("learned kernel:", learned)

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    a.semilogy(np.arange(1, len(losses) + 1), losses, "o-")
    a.set(xlabel="step", ylabel="squared error", title="loss")
    k = np.array(kernels)
    b.plot(k[:, 0], "o-", label="w[0] -> 1")
    b.plot(k[:, 1], "s-", label="w[1] -> -1")
    b.axhline(1, color="0.7", ls="--")
    b.axhline(-1, color="0.7", ls="--")
    b.set(xlabel="step", title="kernel")
    b.legend()
    _shared.save(fig, args, "learning.png")
    return {
        "losses": losses,
        "kernel": learned.tolist(),
        "error": float(np.abs(learned - np.array([1.0, -1.0])).max()),
    }


if __name__ == "__main__":
    main()
