"""Convolution arithmetic: output sizes for padding, stride and dilation, checked by running.

For a 28-pixel input and a 3-pixel kernel: no padding ("valid") gives 26, "same"
keeps 28, "full" padding (2 on each side) gives 30, and stride 2 with full padding
15; dilation 2 spreads the kernel over 5 pixels (24). The rule is
``floor((in + lo + hi - dilation * (k - 1) - 1) / stride) + 1``
(``cj.conv_output_shape``); every row is checked against the shape ``cj.conv``
returns. The figure shows where a 3x3 window lands with stride 2 and what dilation 2
does to its taps (after Dumoulin & Visin's conv arithmetic guide).

    python examples/02_conv_arithmetic.py [--quick] [--out DIR]
"""

import _shared
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import cnn_jax as cj

CASES = [  # (label, kwargs) for a 3-tap kernel on 28 pixels
    ("valid", dict(padding="valid")),
    ("same", dict(padding="same")),
    ("full (padding 2)", dict(padding="full")),
    ("full, stride 2", dict(padding="full", stride=2)),
    ("padding 1, stride 2", dict(padding=1, stride=2)),
    ("valid, dilation 2", dict(padding="valid", dilation=2)),
]


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "02_conv_arithmetic")
    x = jnp.ones((1, 28, 28, 1))
    kernel = jnp.ones((3, 3, 1, 1))
    sizes = {}
    for label, kw in CASES:
        predicted = cj.conv_output_shape((28, 28), 3, **kw)
        actual = tuple(cj.conv(x, kernel, **kw).shape[1:3])
        assert predicted == actual, (label, predicted, actual)
        sizes[label] = actual[0]
        print(f"{label:22s} 28 -> {actual[0]}")

    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    panels = [("3x3 windows, stride 2 on 7x7 (3x3 output)", 1), ("3x3 kernel, dilation 2", 2)]
    for ax, (title, dilation) in zip(axes, panels):
        ax.imshow(np.zeros((7, 7)), cmap="Greys", vmin=0, vmax=1)
        ax.set_xticks(np.arange(-0.5, 7), minor=True)
        ax.set_yticks(np.arange(-0.5, 7), minor=True)
        ax.grid(which="minor", color="0.7")
        ax.set_xticks([])
        ax.set_yticks([])
        if dilation == 1:
            # The first output row's three windows and the next row's first: each
            # step moves the window by the stride, so neighbouring windows overlap by 1.
            for n, (i, j) in enumerate([(0, 0), (0, 2), (0, 4), (2, 0)]):
                inset = 0.08 * n
                ax.add_patch(
                    Rectangle(
                        (j - 0.5 + inset, i - 0.5 + inset),
                        3 - 2 * inset,
                        3 - 2 * inset,
                        fill=False,
                        lw=2,
                        color=f"C{n}",
                    )
                )
        else:
            for i in range(3):
                for j in range(3):
                    ax.add_patch(
                        Rectangle((1 + 2 * j - 0.5, 1 + 2 * i - 0.5), 1, 1, color="C3", alpha=0.7)
                    )
            ax.add_patch(Rectangle((0.5, 0.5), 5, 5, fill=False, lw=2, color="C3"))
        ax.set_title(title)
    _shared.save(fig, args, "arithmetic.png")
    return sizes


if __name__ == "__main__":
    main()
