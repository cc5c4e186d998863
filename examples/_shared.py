"""Helpers shared by the examples: command line, output folder, figures, a small trainer.

Not part of cnn_jax; each example imports it as ``import _shared`` (it sits beside
them). Everything here uses cnn_jax's public API, flax.nnx and optax only.
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

EXAMPLES = os.path.dirname(os.path.abspath(__file__))


def parse_args(doc: str, argv=None, name: str | None = None, **extra):
    """``--quick`` (tiny settings, seconds) and ``--out`` (default ``runs/examples/NAME``).

    ``extra``: more ``--flag=default`` options (type taken from the default).
    """
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--out", default=None, help="output folder for the figures")
    for key, default in extra.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join("runs", "examples", name or "example")
    os.makedirs(args.out, exist_ok=True)
    return args


def rngs(seed: int = 0) -> nnx.Rngs:
    """``nnx.Rngs`` on the "rbg" generator: on CPU, drawing initial weights with the
    default threefry generator compiles one slow program per weight shape, which is
    most of a small example's run time; rbg keys are as good for initialisation."""
    import jax

    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def save(fig, args, filename: str) -> str:
    """Save ``fig`` as PNG in the output folder, close it, print and return the path."""
    path = os.path.join(args.out, filename)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path


def train(
    model: nnx.Module,
    images,
    labels,
    *,
    steps: int,
    lr: float = 3e-3,
    batch: int = 64,
    seed: int = 0,
) -> list[float]:
    """Adam on softmax cross-entropy (per image or per pixel); returns the step losses.

    The model is trained in place and left in eval mode.
    """
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(images), size=min(batch, len(images)), replace=False)
        losses.append(float(step(model, optimizer, images[idx], labels[idx])))
    model.eval()
    return losses


def predict(model: nnx.Module, images, batch: int = 256) -> np.ndarray:
    """Logits of the eval-mode model, in batches."""
    forward = nnx.jit(lambda m, x: m(x))
    return np.concatenate(
        [np.asarray(forward(model, images[i : i + batch])) for i in range(0, len(images), batch)]
    )


def digits(size: int | None = None):
    """scikit-learn's digits as ``(train, test)`` cnn_jax Datasets, optionally resized."""
    from cnn_jax.train import load_digits

    train_set, test_set = load_digits()
    return train_set.resized(size), test_set.resized(size)
