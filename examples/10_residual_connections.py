"""Residual connections: a deep plain CNN vs the same depth with skips, on the digits.

Both networks have the same layers: a 3x3 stem conv, ``depth`` 3x3 conv-ReLU layers of
16 channels, global average pooling and a linear head, PyTorch's default
initialisation and no normalisation. In the residual one every pair of convs is
wrapped in ``cj.nn.Residual`` (``x + f(x)``). Adding layers should never hurt (the
extra ones could learn the identity), yet the plain stack trains worse: its signal
and gradients fade through the depth (the degradation problem of He et al. 2016),
while the skips carry them unchanged. The figure shows the two loss curves.

    python examples/10_residual_connections.py [--quick] [--out DIR]
"""

import _shared
import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import cnn_jax as cj


def build(depth, residual, rngs, width=16):
    def conv():
        return cj.nn.Conv(width, width, 3, padding=1, rngs=rngs)

    layers = [cj.nn.Conv(1, width, 3, padding=1, rngs=rngs), jax.nn.relu]
    for _ in range(depth // 2):
        if residual:  # the branch ends in a conv: the sum stays linear, as in ResNets
            layers += [cj.nn.Residual(nnx.Sequential(conv(), jax.nn.relu, conv())), jax.nn.relu]
        else:
            layers += [conv(), jax.nn.relu, conv(), jax.nn.relu]
    layers += [cj.nn.GlobalAvgPool(), nnx.Linear(width, 10, rngs=rngs)]
    return nnx.Sequential(*layers)


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "10_residual_connections", depth=20, steps=300)
    depth, steps, lr = (8, 40, 3e-3) if args.quick else (args.depth, args.steps, 1e-3)
    train, test = _shared.digits()
    curves, accuracy = {}, {}
    for name, residual in (("plain", False), ("residual", True)):
        model = build(depth, residual, _shared.rngs(0))
        curves[name] = _shared.train(model, train.images, train.labels, steps=steps, lr=lr)
        accuracy[name] = float(
            (_shared.predict(model, test.images).argmax(-1) == test.labels).mean()
        )
        print(
            f"{name:9s} depth {depth}: final loss {np.mean(curves[name][-10:]):.3f}, "
            f"test accuracy {accuracy[name]:.3f}"
        )

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, losses in curves.items():
        smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
        ax.plot(smooth, label=f"{name} ({depth} convs), test acc {accuracy[name]:.2f}")
    ax.set(
        xlabel="step",
        ylabel="training loss (moving average)",
        title="same depth, with and without skips",
    )
    ax.legend()
    _shared.save(fig, args, "residual.png")
    return {
        "final_loss": {k: float(np.mean(v[-10:])) for k, v in curves.items()},
        "accuracy": accuracy,
    }


if __name__ == "__main__":
    main()
