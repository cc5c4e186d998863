"""``curves.png`` (loss and accuracy per epoch) and ``filters.png`` (first-layer kernels).

Matplotlib's object API on the Agg canvas: no pyplot, no global backend switch, no
screen needed.
"""

from __future__ import annotations

import math

import numpy as np
from flax import nnx


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(epochs: list[dict], path: str) -> None:
    """Loss (left) and accuracy (right) per epoch, train and test."""
    fig = _figure(9, 3.5)
    ax_loss, ax_acc = fig.subplots(1, 2)
    x = [r["epoch"] for r in epochs]
    for split, style in (("train", "-o"), ("test", "-s")):
        ax_loss.plot(x, [r[f"{split}_loss"] for r in epochs], style, ms=3, label=split)
        ax_acc.plot(x, [r[f"{split}_accuracy"] for r in epochs], style, ms=3, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def first_conv_kernel(model: nnx.Module) -> np.ndarray | None:
    """The first 2-D conv kernel (HWIO) of ``model``, in graph order, or None.

    The input layer is the first 4-D parameter named ``kernel`` whose input
    channels equal those of the first such kernel found, preferring 3 or 1 (RGB or
    grey inputs) so a depthwise kernel deeper in is not mistaken for it.
    """
    kernels = [(path, np.asarray(v[...])) for path, v in nnx.iter_graph(model)
               if isinstance(v, nnx.Param) and path and path[-1] == "kernel"
               and getattr(v[...], "ndim", 0) == 4]
    if not kernels:
        return None
    for channels in (3, 1):
        for _, k in kernels:
            if k.shape[2] == channels:
                return k
    return kernels[0][1]


def plot_filters(model: nnx.Module, path: str, *, max_filters: int = 64) -> bool:
    """A grid of the first conv layer's kernels; returns False when there is none."""
    kernel = first_conv_kernel(model)
    fig = _figure(6, 6)
    if kernel is None:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no 2-D conv kernel", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path)
        return False
    n = min(kernel.shape[-1], max_filters)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        k = kernel[..., i]
        k = (k - k.min()) / (np.ptp(k) + 1e-12)
        if k.shape[-1] == 3:
            ax.imshow(k, interpolation="nearest")
        else:
            ax.imshow(k.mean(-1), cmap="gray", interpolation="nearest")
    fig.suptitle(f"first-layer kernels {tuple(kernel.shape)} (HWIO)")
    fig.savefig(path)
    return True
