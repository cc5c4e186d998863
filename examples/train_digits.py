"""Train a CNN on scikit-learn's digits with the Python API (what ``cnn-jax train`` does).

    python examples/train_digits.py            # ~98.6% test accuracy, outputs in runs/example
    python examples/train_digits.py --epochs 3 --out /tmp/digits
    python examples/train_digits.py --quick    # one epoch on 256 images: a smoke run

Step by step: load the fixed stratified split, build a model from cnn_jax.models,
train it with cnn_jax.train.fit (jitted step, AdamW + cosine schedule, BatchNorm
statistics, checkpoints), then use the trained model directly.
"""

import argparse
import dataclasses

import numpy as np
from flax import nnx

from cnn_jax.models import LeNet5
from cnn_jax.train import TrainConfig, evaluate, fit, load_digits, predict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="runs/example")
    parser.add_argument("--quick", action="store_true", help="one epoch on 256 images")
    args = parser.parse_args(argv)

    train, test = load_digits()  # (1437, 8, 8, 1) and (360, 8, 8, 1), values in [0, 1]
    if args.quick:
        args.epochs = 1
        train = dataclasses.replace(train, images=train.images[:256], labels=train.labels[:256])
        test = dataclasses.replace(test, images=test.images[:128], labels=test.labels[:128])
    train, test = train.resized(32), test.resized(32)  # LeNet-5 reads 32x32 images
    model = LeNet5(train.num_classes, in_channels=1, rngs=nnx.Rngs(0))
    config = TrainConfig(
        epochs=args.epochs,
        out=args.out,
        batch_size=32,
        lr=5e-3,
        optimizer="adamw",
        schedule="cosine",
        augment=True,
    )
    history = fit(model, train, test, config, run_info={"model": "lenet5"})
    for record in history.epochs:
        print(
            f"epoch {record['epoch']:2d}  train loss {record['train_loss']:.4f}  "
            f"test accuracy {record['test_accuracy']:.4f}"
        )

    # The model is trained in place and left in eval mode: use it directly.
    metrics = evaluate(model, test)
    probs = predict(model, test.images[:5])
    print(
        f"test accuracy {metrics['accuracy']:.4f}; first five predictions "
        f"{np.argmax(probs, -1).tolist()} (labels {test.labels[:5].tolist()})"
    )
    print(f"summary.json, metrics.jsonl, curves.png, filters.png and checkpoints in {args.out}")
    return {"accuracy": metrics["accuracy"], "epochs": len(history.epochs)}


if __name__ == "__main__":
    main()
