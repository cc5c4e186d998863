"""Back-propagation through a convolution: the seed's formulas, checked against jax.grad.

For y = x * k (cross-correlation, no padding) and an upstream gradient dL/dy:
the input gradient dL/dx is the *full* convolution of dL/dy with the kernel flipped
(i.e. ``cj.conv(dy, k, padding="full", flip=True)``, or ``cj.conv_input_grad``), and
the kernel gradient dL/dk is the cross-correlation of the input with dL/dy
(``cj.conv(x, dy)``, or ``cj.conv_kernel_grad``). Both equal what ``jax.vjp``
returns. A 5x5 input, a 3x3 kernel, one channel.

    python examples/07_conv_backprop.py [--quick] [--out DIR]
"""

import _shared
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import cnn_jax as cj


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "07_conv_backprop")
    kx, kk, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (1, 5, 5, 1))  # (N, H, W, C)
    k = jax.random.normal(kk, (3, 3, 1, 1))  # (kH, kW, C_in, C_out)
    y, vjp = jax.vjp(lambda x, k: cj.conv(x, k), x, k)
    dy = jax.random.normal(ky, y.shape)  # dL/dy from the layers above
    dx_jax, dk_jax = vjp(dy)

    dx_formula = cj.conv(dy, k, padding="full", flip=True)  # full conv, flipped kernel
    # Cross-correlation of x with dy: dy plays the kernel, (3, 3, 1, 1) after transposes.
    dk_formula = cj.conv(x, jnp.transpose(dy, (1, 2, 0, 3)))
    dx_op = cj.conv_input_grad(dy, k, x.shape)
    dk_op = cj.conv_kernel_grad(x, dy, k.shape)
    errors = {
        "dx formula": float(jnp.abs(dx_formula - dx_jax).max()),
        "dx conv_input_grad": float(jnp.abs(dx_op - dx_jax).max()),
        "dk formula": float(jnp.abs(dk_formula.reshape(k.shape) - dk_jax).max()),
        "dk conv_kernel_grad": float(jnp.abs(dk_op - dk_jax).max()),
    }
    for name, err in errors.items():
        print(f"{name:22s} max |difference from jax.vjp| = {err:.2e}")

    panels = [
        ("x (5x5)", x),
        ("k (3x3)", k),
        ("dL/dy (3x3)", dy),
        ("dL/dx = full conv(dy, flip(k))", dx_formula),
        ("dL/dk = xcorr(x, dy)", dk_op),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(14, 3))
    for ax, (name, a) in zip(axes, panels):
        a = np.asarray(a).squeeze()
        lim = np.abs(a).max()
        ax.imshow(a, cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    _shared.save(fig, args, "backprop.png")
    return errors


if __name__ == "__main__":
    main()
