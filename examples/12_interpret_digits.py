"""What a trained digits CNN looks at: Grad-CAM, saliency and integrated gradients.

A small CNN (three conv-ReLU layers with 2x2 max pools between them, global pool,
linear; an ``nnx.Sequential``, so its layers are named "0", "3", "6", ...) is
trained on scikit-learn's digits upsampled to 32x32 (16x16 with ``--quick``). For
test images, ``cj.interpret`` gives: Grad-CAM at the last conv ("6": where the
evidence for the predicted class lies, at quarter resolution), the vanilla gradient
(saliency: which pixels change the score most) and integrated gradients from a
black image (how much each pixel contributed; they sum to the score change, which
is checked). The figure is a grid of heat maps over the digits.

    python examples/12_interpret_digits.py [--quick] [--out DIR]
"""

import _shared
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import cnn_jax as cj


def build(rngs):
    return nnx.Sequential(
        cj.nn.Conv(1, 16, 3, padding=1, rngs=rngs),
        jax.nn.relu,  # 0, 1
        cj.nn.MaxPool(2),  # 2
        cj.nn.Conv(16, 32, 3, padding=1, rngs=rngs),
        jax.nn.relu,  # 3, 4
        cj.nn.MaxPool(2),  # 5
        cj.nn.Conv(32, 64, 3, padding=1, rngs=rngs),
        jax.nn.relu,  # 6, 7
        cj.nn.GlobalAvgPool(),
        nnx.Linear(64, 10, rngs=rngs),  # 8, 9
    )


def main(argv=None):
    args = _shared.parse_args(__doc__, argv, "12_interpret_digits", steps=400)
    steps, size, lr = (40, 16, 3e-3) if args.quick else (args.steps, 32, 1e-2)
    train, test = _shared.digits(size)
    model = build(_shared.rngs(0))
    _shared.train(model, train.images, train.labels, steps=steps, lr=lr)
    accuracy = float((_shared.predict(model, test.images).argmax(-1) == test.labels).mean())
    print(f"test accuracy after {steps} steps: {accuracy:.3f}")

    x = jnp.asarray(test.images[:6])
    target = jnp.asarray(np.asarray(model(x)).argmax(-1))
    cam = cj.interpret.grad_cam(model, x, target, "6")
    sal = jnp.abs(cj.interpret.saliency(model, x, target)).max(-1)
    ig = cj.interpret.integrated_gradients(model, x, target, steps=128, batch_size=None)
    scores = np.asarray(jnp.take_along_axis(model(x), target[:, None], 1)[:, 0])
    baseline = np.asarray(jnp.take_along_axis(model(jnp.zeros_like(x)), target[:, None], 1)[:, 0])
    completeness = float(
        np.max(
            np.abs(np.asarray(ig.sum((1, 2, 3))) - (scores - baseline)) / np.abs(scores - baseline)
        )
    )
    print(
        f"integrated gradients: attributions sum to the score change within "
        f"{100 * completeness:.2f}%"
    )

    fig, axes = plt.subplots(4, len(x), figsize=(1.8 * len(x), 7.4))
    for i in range(len(x)):
        lim = float(jnp.abs(ig[i]).max())
        for row, (name, img, kw) in enumerate(
            [
                (f"digit {int(test.labels[i])} -> {int(target[i])}", x[i, ..., 0], {}),
                ("Grad-CAM", cam[i], dict(cmap="jet")),
                ("saliency", sal[i], dict(cmap="hot")),
                ("integrated gradients", ig[i, ..., 0], dict(cmap="RdBu", vmin=-lim, vmax=lim)),
            ]
        ):
            ax = axes[row, i]
            if row in (1, 2):
                ax.imshow(x[i, ..., 0], cmap="gray")
                ax.imshow(np.asarray(img), alpha=0.6, **kw)
            else:
                ax.imshow(np.asarray(img), **({"cmap": "gray"} if row == 0 else kw))
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    _shared.save(fig, args, "interpret.png")
    return {"accuracy": accuracy, "completeness_error": completeness, "cam_shape": tuple(cam.shape)}


if __name__ == "__main__":
    main()
