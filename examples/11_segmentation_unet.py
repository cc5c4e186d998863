"""Segmentation: a U-Net learns to label every pixel of the synthetic shapes set.

``cnn_jax.train.make_shapes`` draws circles, squares and triangles on a noisy
background, with a mask giving each pixel its class (0 background, 1 circle, 2
square, 3 triangle). ``cj.models.UNet`` (contracting path, transposed-conv
upsampling, skip concatenations) is trained with per-pixel cross-entropy; the mean
intersection-over-union over the four classes on held-out images is reported
(about 0.9 or more after the full run) and predicted masks are saved beside the
true ones.

    python examples/11_segmentation_unet.py [--quick] [--out DIR]
"""

import _shared
import matplotlib.pyplot as plt
import numpy as np

import cnn_jax as cj
from cnn_jax.train import make_shapes


def mean_iou(pred, true, num_classes):
    ious = []
    for c in range(num_classes):
        union = np.logical_or(pred == c, true == c).sum()
        if union:
            ious.append(np.logical_and(pred == c, true == c).sum() / union)
    return float(np.mean(ious))


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "11_segmentation_unet", steps=600)
    n_train, steps, size, depth = (128, 80, 16, 1) if args.quick else (1024, args.steps, 32, 2)
    train, test = make_shapes(n_train, 64, size=size, seed=0)
    model = cj.models.UNet(
        train.num_classes, in_channels=3, base_width=8, depth=depth, rngs=_shared.rngs(0)
    )
    losses = _shared.train(model, train.images, train.labels, steps=steps, lr=3e-3, batch=32)
    pred = _shared.predict(model, test.images).argmax(-1)
    iou = mean_iou(pred, test.labels, train.num_classes)
    pixel_acc = float((pred == test.labels).mean())
    print(
        f"{steps} steps: final loss {np.mean(losses[-10:]):.3f}, pixel accuracy "
        f"{pixel_acc:.3f}, mean IoU {iou:.3f}"
    )

    fig, axes = plt.subplots(3, 6, figsize=(12, 6.2))
    for i in range(6):
        for row, (title, img) in enumerate(
            [("image", test.images[i]), ("true mask", test.labels[i]), ("predicted", pred[i])]
        ):
            ax = axes[row, i]
            if row:
                ax.imshow(img, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
            else:
                ax.imshow(img)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"U-Net on shapes: mean IoU {iou:.2f}")
    _shared.save(fig, args, "segmentation.png")
    return {"mean_iou": iou, "pixel_accuracy": pixel_acc, "losses": losses}


if __name__ == "__main__":
    main()
