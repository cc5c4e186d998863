"""Depthwise-separable vs standard convolution: parameters, FLOPs, time and accuracy.

MobileNet's argument (Howard et al. 2017): a 3x3 conv from C_in to C_out channels
costs 9 * C_in * C_out weights and multiply-adds per pixel; a depthwise 3x3 conv
(one filter per channel) followed by a 1x1 pointwise conv costs 9 * C_in + C_in *
C_out, a factor of about 1/9 + 1/C_out. Two four-layer CNNs that differ only in
that choice are compared on the digits: parameters and FLOPs (``cj.summary``),
measured forward time of a batch, and test accuracy after the same training.

    python examples/13_depthwise_separable.py [--quick] [--out DIR]
"""

import time

import _shared
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
from flax import nnx

import cnn_jax as cj


def build(separable, rngs, width=64):
    def conv(cin, cout):
        if separable:
            return cj.nn.SeparableConv(cin, cout, 3, padding=1, rngs=rngs)
        return cj.nn.Conv(cin, cout, 3, padding=1, rngs=rngs)

    return nnx.Sequential(
        cj.nn.Conv(1, width, 3, padding=1, rngs=rngs),
        jax.nn.relu,
        conv(width, width),
        jax.nn.relu,
        conv(width, width),
        jax.nn.relu,
        conv(width, width),
        jax.nn.relu,
        cj.nn.GlobalAvgPool(),
        nnx.Linear(width, 10, rngs=rngs),
    )


def forward_time(model, x, repeats):
    forward = nnx.jit(lambda m, x: m(x))
    forward(model, x).block_until_ready()  # compile and warm up, untimed
    start = time.perf_counter()
    for _ in range(repeats):
        forward(model, x).block_until_ready()
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "13_depthwise_separable", steps=150)
    steps, repeats, size, width = (10, 2, None, 16) if args.quick else (args.steps, 10, 16, 32)
    train, test = _shared.digits(size)
    x = jnp.asarray(train.images[:256])
    results = {}
    for name, separable in (("standard", False), ("separable", True)):
        model = build(separable, _shared.rngs(0), width)
        s = cj.summary(model, train.image_shape)
        seconds = forward_time(model, x, repeats)
        _shared.train(model, train.images, train.labels, steps=steps, lr=3e-3)
        acc = float((_shared.predict(model, test.images).argmax(-1) == test.labels).mean())
        results[name] = dict(
            params=s.total_params, flops=s.total_flops, seconds=seconds, accuracy=acc
        )
        print(
            f"{name:10s} {s.total_params:>8,} params  {s.total_flops / 1e6:7.1f} MFLOPs  "
            f"{1e3 * seconds:6.2f} ms / 256 images  test accuracy {acc:.3f}"
        )

    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
    for ax, key in zip(axes, ("params", "flops", "seconds", "accuracy")):
        ax.bar(list(results), [r[key] for r in results.values()], color=["C0", "C1"])
        ax.set_title(key)
    _shared.save(fig, args, "separable.png")
    return results


if __name__ == "__main__":
    main()
