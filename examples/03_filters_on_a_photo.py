"""Hand-made filters on a real photograph: the seeds' edge, Sobel and blur kernels.

scikit-learn's sample photo (``load_sample_image("china.jpg")``), in grey, is
cross-correlated with ``cj.conv`` (``padding="same"``) with a vertical-edge kernel
[1, -1], a horizontal one, the two Sobel kernels, their gradient magnitude, a
Laplacian and a 5x5 box blur. Edge kernels sum to zero, so flat regions give 0 and
only changes light up; the figure is a grid of the responses.

    python examples/03_filters_on_a_photo.py [--quick] [--out DIR]
"""

import _shared
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_sample_image

import cnn_jax as cj

SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
FILTERS = {
    "vertical edge [1, -1]": np.array([[1, -1]], np.float32),
    "horizontal edge": np.array([[1], [-1]], np.float32),
    "Sobel x": SOBEL_X,
    "Sobel y": SOBEL_X.T.copy(),
    "Laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32),
    "box blur 5x5": np.full((5, 5), 1 / 25, np.float32),
}


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "03_filters_on_a_photo")
    photo = load_sample_image("china.jpg").mean(axis=-1).astype(np.float32) / 255.0
    step = 4 if args.quick else 1
    photo = photo[::step, ::step]
    x = jnp.asarray(photo)[None, :, :, None]  # (N, H, W, C), channels_last
    responses = {}
    for name, k in FILTERS.items():
        y = cj.conv(x, jnp.asarray(k)[:, :, None, None], padding="same")
        responses[name] = np.asarray(y[0, :, :, 0])
    responses["Sobel magnitude"] = np.hypot(responses["Sobel x"], responses["Sobel y"])

    fig, axes = plt.subplots(2, 4, figsize=(14, 5.5))
    axes = axes.ravel()
    axes[0].imshow(photo, cmap="gray")
    axes[0].set_title("input")
    for ax, (name, y) in zip(axes[1:], responses.items()):
        if name in ("box blur 5x5", "Sobel magnitude"):
            ax.imshow(y, cmap="gray")
        else:  # signed: white is 0, red and blue the two directions of change
            lim = np.percentile(np.abs(y), 99)
            ax.imshow(y, cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set_title(name)
    for ax in axes:
        ax.axis("off")
    _shared.save(fig, args, "filters.png")
    flat = photo[:20, :20]  # sky: nearly flat
    return {
        "shape_kept": all(y.shape == photo.shape for y in responses.values()),
        "edges_sum_to_zero": all(
            abs(k.sum()) < 1e-6 for n, k in FILTERS.items() if "blur" not in n
        ),
        "edge_response_small_on_flat_sky": float(np.abs(responses["Sobel x"][2:18, 2:18]).mean())
        < float(np.abs(responses["Sobel x"]).mean()),
        "blur_keeps_mean": abs(
            float(responses["box blur 5x5"][10:-10, 10:-10].mean())
            - float(photo[10:-10, 10:-10].mean())
        )
        < 0.01,
        "flat_std": float(flat.std()),
    }


if __name__ == "__main__":
    main()
