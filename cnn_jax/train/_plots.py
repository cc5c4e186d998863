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
    kernels = [
        (path, np.asarray(v[...]))
        for path, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Param)
        and path
        and path[-1] == "kernel"
        and getattr(v[...], "ndim", 0) == 4
    ]
    if not kernels:
        return None
    for channels in (3, 1):
        for _, k in kernels:
            if k.shape[2] == channels:
                return k
    return kernels[0][1]


def filter_mosaic(kernel: np.ndarray, max_filters: int = 64) -> np.ndarray:
    """The first ``max_filters`` kernels of an HWIO ``kernel`` tiled into one image.

    Each kernel is scaled to ``[0, 1]`` on its own; RGB kernels stay RGB, others are
    averaged over their input channels. Tiles are separated by a 1-pixel border of
    ones (white). Returns ``(rows * (H + 1) + 1, cols * (W + 1) + 1[, 3])``.
    """
    n = min(kernel.shape[-1], max_filters)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, c = kernel.shape[:3]
    rgb = c == 3
    mosaic = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1) + ((3,) if rgb else ()))
    for i in range(n):
        k = kernel[..., i].astype(np.float64)
        k = (k - k.min()) / (np.ptp(k) + 1e-12)
        r, q = divmod(i, cols)
        mosaic[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = (
            k if rgb else k.mean(-1)
        )
    return mosaic


def plot_filters(model: nnx.Module, path: str, *, max_filters: int = 64) -> bool:
    """The first conv layer's kernels as one tiled image; returns False when there is none.

    One ``imshow`` of :func:`filter_mosaic` (not one axes per kernel, which costs
    matplotlib a second for 64 kernels).
    """
    kernel = first_conv_kernel(model)
    fig = _figure(6, 6)
    ax = fig.subplots()
    ax.axis("off")
    if kernel is None:
        ax.text(0.5, 0.5, "no 2-D conv kernel", ha="center", va="center")
        fig.savefig(path)
        return False
    ax.imshow(
        filter_mosaic(kernel, max_filters), cmap="gray", interpolation="nearest", vmin=0.0, vmax=1.0
    )
    ax.set_title(f"first-layer kernels {tuple(kernel.shape)} (HWIO)")
    fig.savefig(path)
    return True
