"""Pooling on the seeds' examples: max, average, min, Lp, global and adaptive.

The d2l seed's 3x3 input 0..8 with a 2x2 window and stride 1 gives max [[4, 5], [7, 8]]
and average [[2, 3], [5, 6]]; min pooling gives [[0, 1], [3, 4]] and L2 pooling the
root of the window's sum of squares. Padding and stride work as for convolution
(a padded 4x4 input with a 3x3/2 window: 2x2). Global pooling reduces each channel to
one number (``(N, C)``, what a classifier head needs); adaptive pooling produces a
fixed output size from any input size, with PyTorch's bins.

    python examples/05_pooling.py [--quick] [--out DIR]
"""

import _shared
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import cnn_jax as cj


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "05_pooling")
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)  # (N, H, W, C)
    results = {
        "max": cj.max_pool(x, (2, 2), stride=1),
        "avg": cj.avg_pool(x, (2, 2), stride=1),
        "min": cj.min_pool(x, (2, 2), stride=1),
        "L2": cj.lp_pool(x, 2, (2, 2), stride=1),
    }
    grid = jnp.arange(16.0).reshape(1, 4, 4, 1)
    results["max 3x3/2, padding 1"] = cj.max_pool(grid, (3, 3), stride=2, padding=1)
    results["adaptive avg -> 3x3"] = cj.adaptive_avg_pool(grid, (3, 3))
    two_channels = jnp.concatenate([grid, -grid], axis=-1)
    results["global avg"] = cj.global_avg_pool(two_channels)
    results["global max"] = cj.global_max_pool(two_channels)
    for name, y in results.items():
        print(f"{name}:\n{np.asarray(y).squeeze()}")

    shown = {"input 0..8": x, **{k: v for k, v in results.items() if v.ndim == 4}}
    fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 2.6))
    for ax, (name, y) in zip(axes, shown.items()):
        y = np.asarray(y)[0, :, :, 0]
        ax.imshow(y, cmap="viridis")
        for (i, j), v in np.ndenumerate(y):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    _shared.save(fig, args, "pooling.png")
    return {k: np.asarray(v).squeeze().tolist() for k, v in results.items()}


if __name__ == "__main__":
    main()
