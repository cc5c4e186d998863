"""The ``cnn-jax`` command: a thin argparse layer over :mod:`cnn_jax.train`.

    cnn-jax train                       # LeNet-5 on the bundled digits, >= 98%
    cnn-jax train --model resnet18 --dataset cifar10 --data-dir ~/data --augment
    cnn-jax evaluate --out runs/digits
    cnn-jax predict img1.png img2.png --out runs/digits
    cnn-jax summary --model lenet5 --input-shape 32,32,1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cnn_jax.train._config import DATASETS, DTYPES, MODELS, OPTIMIZERS, SCHEDULES, TrainConfig


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"--input-shape must be three positive ints H,W,C, got {text!r}")
    return shape


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where the help text already says what the default is."""

    def _get_help_string(self, action):
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cnn-jax`` (subcommands train/evaluate/predict/summary)."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="cnn-jax", description="Train and use convolutional networks written in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (default: the digits recipe)",
                       formatter_class=_DefaultsFormatter)
    t.add_argument("--model", choices=MODELS, default=None,
                   help="architecture (default: lenet5; unet for shapes)")
    t.add_argument("--dataset", choices=DATASETS, default=defaults.dataset)
    t.add_argument("--data-dir", default=None,
                   help="folder with the data set's files (mnist, fashion_mnist, cifar10, folder)")
    t.add_argument("--epochs", type=int, default=defaults.epochs)
    t.add_argument("--batch-size", type=int, default=defaults.batch_size)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    t.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    t.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule)
    t.add_argument("--warmup", type=float, default=defaults.warmup, help="warm-up epochs")
    t.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=defaults.augment,
                   help="random shifts (+ horizontal flips for RGB)")
    t.add_argument("--dtype", choices=DTYPES, default=defaults.dtype,
                   help="compute dtype (params and optimiser state stay float32)")
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument("--out", default=None,
                   help="output folder (default: runs/MODEL-DATASET-TIME)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    t.add_argument("--devices", type=int, default=None, help="devices to use (default: all)")
    t.add_argument("--width", type=int, default=None, help="simple_cnn/unet width")
    t.add_argument("--image-size", type=int, default=None, help="resize inputs to SIZE x SIZE")
    t.add_argument("--limit", type=int, default=None,
                   help="use only the first N train and test examples")
    t.add_argument("--keep", type=int, default=defaults.keep_checkpoints,
                   help="latest checkpoints to keep (the best is kept too)")
    t.add_argument("--coordinator", default=None, help="multi-host: HOST:PORT of process 0")
    t.add_argument("--num-processes", type=int, default=None, help="multi-host: process count")
    t.add_argument("--process-id", type=int, default=None, help="multi-host: this process")

    e = sub.add_parser("evaluate", help="test loss and accuracy of a trained run")
    e.add_argument("--out", required=True, help="the run folder written by train")
    e.add_argument("--checkpoint", choices=("best", "latest"), default="best")

    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="the run folder written by train")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument("--top", type=int, default=1, help="classes to print per image")

    s = sub.add_parser("summary", help="layer table of a model")
    s.add_argument("--model", choices=MODELS, required=True)
    s.add_argument("--input-shape", type=_input_shape, required=True, metavar="H,W,C")
    s.add_argument("--num-classes", type=int, default=10)
    return parser


def _train(args) -> int:
    from cnn_jax.train import initialize_distributed, train_and_evaluate

    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    out = args.out
    if out is None:
        name = args.model or ("unet" if args.dataset == "shapes" else "lenet5")
        out = os.path.join("runs", f"{name}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    config = TrainConfig(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        schedule=args.schedule, warmup=args.warmup, weight_decay=args.weight_decay,
        augment=args.augment, dtype=args.dtype, seed=args.seed, out=out, resume=args.resume,
        quiet=args.quiet, keep_checkpoints=args.keep, num_devices=args.devices,
        image_size=args.image_size, width=args.width, limit=args.limit)
    t0 = time.perf_counter()
    history = train_and_evaluate(config)
    s = history.summary
    if history.interrupted:
        print(f"interrupted after {s['epochs']} epoch(s); resume with: cnn-jax train --out "
              f"{out} --resume (and the same options)")
        return 130
    print(f"{s['model']} on {s['dataset']}: test accuracy {s['test_accuracy']:.4f}, "
          f"test loss {s['test_loss']:.4f}, {s['epochs']} epochs, "
          f"{s['images_per_s']:.0f} images/s, {time.perf_counter() - t0:.1f} s; "
          f"outputs in {out}")
    return 0


def _evaluate(args) -> int:
    from cnn_jax.train import evaluate, load_run
    from cnn_jax.train._experiment import prepare_data

    model, run = load_run(args.out, which=args.checkpoint)
    config = TrainConfig(**dict(run["config"], resume=False, out=None, quiet=True))
    _, test = prepare_data(config)
    metrics = evaluate(model, test, batch_size=config.eval_batch_size, num_devices=1)
    print(json.dumps({"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"],
                      "examples": len(test), "step": run["step"], "model": run["model"],
                      "dataset": run["dataset"]}))
    return 0


def _predict(args) -> int:
    import numpy as np

    from cnn_jax.train import load_images, load_run, predict

    model, run = load_run(args.out, which=args.checkpoint)
    if run["dataset"] == "shapes":
        raise ValueError("predict: the run must be a classifier, got a segmentation run "
                         f"({run['model']} on shapes)")
    images = load_images(args.images, tuple(run["image_shape"]))
    probs = predict(model, images)
    names = run["class_names"]
    top = max(1, min(args.top, len(names)))
    for path, p in zip(args.images, probs):
        best = np.argsort(-p)[:top]
        print(path + "\t" + "\t".join(f"{names[i]} {p[i]:.4f}" for i in best))
    return 0


def _summary(args) -> int:
    from cnn_jax.models import summary
    from cnn_jax.train import create_model

    model = create_model(args.model, args.num_classes, args.input_shape)
    print(summary(model, args.input_shape))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cnn-jax``; returns the exit status (0 ok, 1 error, 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from cnn_jax.train import CheckpointError, DatasetError, NonFiniteLossError

    handlers = {"train": _train, "evaluate": _evaluate, "predict": _predict,
                "summary": _summary}
    try:
        return handlers[args.command](args)
    except (DatasetError, CheckpointError, NonFiniteLossError, ValueError) as e:
        print(f"cnn-jax {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cnn-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
