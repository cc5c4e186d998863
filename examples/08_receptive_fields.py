"""Receptive fields, theoretical and effective, for a plain CNN and a ResNet, as heat maps.

The theoretical field (``cj.receptive_field``) is every input pixel that can reach
an output unit: for n stacked 3x3 convs, 2n + 1 pixels. The effective field of Luo et
al. 2016 (``cj.interpret.effective_receptive_field``: the gradient of the centre unit
with respect to the input, averaged over random inputs) shows how much each pixel
actually moves it: a roughly Gaussian blob, much narrower than the theoretical
square, whose width grows like sqrt(n) rather than n. Shown for a plain stack of
3x3 conv-ReLU layers and for a small ResNet's stages, the square drawn in each map.

    python examples/08_receptive_fields.py [--quick] [--out DIR]
"""

import _shared
import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from matplotlib.patches import Rectangle

import cnn_jax as cj


def plain_cnn(depth, width, rngs):
    layers = [cj.nn.Conv(1, width, 3, padding=1, rngs=rngs), jax.nn.relu]
    for _ in range(depth - 1):
        layers += [cj.nn.Conv(width, width, 3, padding=1, rngs=rngs), jax.nn.relu]
    return nnx.Sequential(*layers)


def mass_width(erf, fraction=0.95):
    """Side of the smallest centred square holding ``fraction`` of the map's mass."""
    c, total = erf.shape[0] // 2, erf.sum()
    for r in range(c + 1):
        if erf[c - r : c + r + 1, c - r : c + r + 1].sum() >= fraction * total:
            return 2 * r + 1
    return erf.shape[0]


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "08_receptive_fields")
    size, samples = (25, 2) if args.quick else (65, 16)
    depths = (4,) if args.quick else (2, 4, 8, 12)
    rngs = _shared.rngs(0)
    cases = []
    for depth in depths:
        model = plain_cnn(depth, 8, rngs)
        erf = effective(model, (size, size, 1), None, samples)
        cases.append((f"plain, {depth} convs", erf, cj.receptive_field(model).size[0]))
    resnet = cj.models.ResNet(
        10, stage_sizes=(1, 1, 1, 1), width=8, in_channels=1, small_input=True, rngs=rngs
    )
    resnet.eval()
    summary = cj.summary(resnet, (size, size, 1))
    for layer in ("layer2.0",) if args.quick else ("layer1.0", "layer2.0", "layer3.0"):
        erf = effective(resnet, (size, size, 1), layer, samples)
        cases.append((f"ResNet {layer}", erf, summary[layer].receptive_field[0][0]))

    fig, axes = plt.subplots(1, len(cases), figsize=(3 * len(cases), 3.3), squeeze=False)
    axes = axes[0]
    widths = {}
    for ax, (name, erf, theory) in zip(axes, cases):
        ax.imshow(erf / erf.max(), cmap="magma")
        c = size // 2
        half = min(theory // 2, c)
        ax.add_patch(
            Rectangle(
                (c - half - 0.5, c - half - 0.5),
                2 * half + 1,
                2 * half + 1,
                fill=False,
                color="c",
                lw=1.5,
            )
        )
        widths[name] = (mass_width(erf), int(theory))
        ax.set_title(f"{name}\ntheory {theory}, 95% mass in {widths[name][0]}", fontsize=9)
        ax.axis("off")
        print(
            f"{name:18s} theoretical {theory:3d} px, 95% of the effective field in "
            f"{widths[name][0]} px"
        )
    _shared.save(fig, args, "receptive_fields.png")
    return widths


def effective(model, shape, layer, samples):
    return np.asarray(
        cj.interpret.effective_receptive_field(
            model, shape, layer=layer, num_samples=samples, key=jax.random.key(1)
        )
    )


if __name__ == "__main__":
    main()
