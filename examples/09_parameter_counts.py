"""Parameter counts: Conv1d/2d/3d vs a dense layer (the seed's exercise), and the zoo's.

A convolution's parameters depend only on channels and kernel size
(``C_out * C_in * k**n + C_out``), not on the image: 32 -> 32 channels with k = 5 are
25,632 (1-D: 5,152; 3-D: 128,032) for any image size. A dense layer mapping a
flattened 28x28 image to a 24x24 one (what a valid 5x5 conv does to the size)
already needs 452,160 parameters, and 32x32 -> 28x28 803,600, growing with the
image. Then every model of the zoo: parameters and FLOPs from ``cj.summary``.

    python examples/09_parameter_counts.py [--quick] [--out DIR]
"""

import math

import _shared
import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import cnn_jax as cj

ZOO = {  # name: (constructor, input shape); abstract models, nothing is computed
    "LeNet5": (lambda: cj.models.LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)), (32, 32, 1)),
    "MobileNetV2": (lambda: cj.models.MobileNetV2(1000, rngs=nnx.Rngs(0)), (224, 224, 3)),
    "ResNet18": (lambda: cj.models.ResNet18(1000, rngs=nnx.Rngs(0)), (224, 224, 3)),
    "AlexNet": (lambda: cj.models.AlexNet(1000, rngs=nnx.Rngs(0)), (224, 224, 3)),
    "VGG16": (lambda: cj.models.VGG16(1000, rngs=nnx.Rngs(0)), (224, 224, 3)),
    "ResNet50": (lambda: cj.models.ResNet50(1000, rngs=nnx.Rngs(0)), (224, 224, 3)),
    "EfficientNetB0": (lambda: cj.models.EfficientNetB0(1000, rngs=nnx.Rngs(0)), (224, 224, 3)),
    "ConvNeXtTiny": (lambda: cj.models.ConvNeXtTiny(1000, rngs=nnx.Rngs(0)), (224, 224, 3)),
}


def count(module):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "09_parameter_counts")
    layers = {
        f"Conv{n}d(32, 32, 5)": nnx.eval_shape(
            lambda n=n: cj.nn.Conv(32, 32, (5,) * n, rngs=nnx.Rngs(0))
        )
        for n in (1, 2, 3)
    }
    for h_in, h_out in ((28, 24), (32, 28)):
        layers[f"Linear({h_in}*{h_in}, {h_out}*{h_out})"] = nnx.eval_shape(
            lambda a=h_in, b=h_out: nnx.Linear(a * a, b * b, rngs=nnx.Rngs(0))
        )
    layer_counts = {name: count(m) for name, m in layers.items()}
    for name, n in layer_counts.items():
        print(f"{name:28s} {n:>10,}")

    names = ["LeNet5", "ResNet18"] if args.quick else list(ZOO)
    zoo = {}
    for name in names:
        constructor, shape = ZOO[name]
        s = cj.summary(nnx.eval_shape(constructor), shape)
        zoo[name] = (s.total_params, s.total_flops)
        print(
            f"{name:16s} {s.total_params:>12,} params  {s.total_flops / 1e9:8.2f} GFLOPs "
            f"at {shape[0]}x{shape[1]}"
        )

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.8))
    a.barh(list(layer_counts), list(layer_counts.values()), color=["C0"] * 3 + ["C3"] * 2)
    a.set(xscale="log", xlabel="parameters", title="conv vs dense (32 channels, k = 5)")
    params = np.array([p for p, _ in zoo.values()])
    flops = np.array([f for _, f in zoo.values()])
    b.scatter(params, flops)
    for name, p, f in zip(zoo, params, flops):
        b.annotate(name, (p, f), fontsize=8)
    b.set(
        xscale="log",
        yscale="log",
        xlabel="parameters",
        ylabel="FLOPs per image",
        title="model zoo (cj.summary)",
    )
    _shared.save(fig, args, "parameter_counts.png")
    return {"layers": layer_counts, "zoo": zoo}


if __name__ == "__main__":
    main()
