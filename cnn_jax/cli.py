"""The ``cnn-jax`` command: a thin argparse layer over :mod:`cnn_jax.train`.

    cnn-jax train                       # the digits recipe, ~99% test accuracy
    cnn-jax train --model resnet18 --dataset cifar10 --data-dir ~/data --out runs/r18
    cnn-jax train --out runs/r18 --resume
    cnn-jax evaluate --out runs/digits
    cnn-jax predict img1.png img2.png --out runs/digits
    cnn-jax summary --model lenet5 --input-shape 32,32,1

``train``'s flags are generated from :class:`~cnn_jax.train.TrainConfig`'s fields
(help text and default from one place); the model and data set choices come from
the registries. Printing help imports no jax.

Exit status: 0 done, 1 a user error (one line on stderr: a bad value, missing or
malformed data, a refused checkpoint), 2 a command-line syntax error, 130/143 a
run stopped by SIGINT/SIGTERM (its state saved). A bug inside the library shows
its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import signal
import sys
import time

from cnn_jax.train import _registry
from cnn_jax.train._config import ConfigError, TrainConfig

_TYPES = {"int": int, "float": float, "str": str}


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"--input-shape must be three positive ints H,W,C, got {text!r}")
    return shape


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _choices(spec):
    if spec == "models":
        return tuple(_registry.MODELS)
    if spec == "datasets":
        return tuple(_registry.DATASETS)
    return spec


def _add_config_flags(parser: argparse.ArgumentParser):
    """One flag per :class:`TrainConfig` field; unset flags stay absent from the result."""
    for f in dataclasses.fields(TrainConfig):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        help_text = f"{f.metadata['help']} (default: {f.default})"
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        kind = str(f.type).replace(" | None", "")
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = _choices(f.metadata["choices"])
        elif kind in ("int", "float"):
            kw["type"] = _TYPES[kind]
            kw["metavar"] = "N" if kind == "int" else "X"
        parser.add_argument(flag, **kw)


def _registry_epilog() -> str:
    lines = ["models:"]
    lines += [f"  {e.name:<14} {e.help}" for e in _registry.MODELS.values()]
    lines += ["data sets:"]
    lines += [f"  {e.name:<14} {e.help}" + (" [--data-dir]" if e.needs_data_dir else "")
              for e in _registry.DATASETS.values()]
    lines += ["environment:",
              "  CNN_JAX_COMPILATION_CACHE  compiled-program cache folder, or 'off' "
              "(default: ~/.cache/cnn_jax/jax)"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cnn-jax`` (subcommands train/evaluate/predict/summary)."""
    parser = argparse.ArgumentParser(
        prog="cnn-jax", description="Train and use convolutional networks written in JAX.")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        metavar="MODULE", help="import MODULE first (it may register models "
                                               "or data sets); repeatable")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (default: the digits recipe)",
                       epilog=_registry_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_flags(t)
    g = t.add_argument_group("multi-process runs (jax.distributed; see the README)")
    g.add_argument("--distributed", action="store_true",
                   help="join the job described by the cluster's environment (SLURM, "
                        "Kubernetes, ...): jax.distributed.initialize() with no arguments")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (default: None)")
    g.add_argument("--num-processes", type=int, default=None,
                   help="process count (default: None)")
    g.add_argument("--process-id", type=int, default=None,
                   help="this process, 0..N-1 (default: None)")

    e = sub.add_parser("evaluate", help="test loss and accuracy of a trained run")
    e.add_argument("--out", required=True, help="the run folder written by train")
    e.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint (default: best)")

    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="the run folder written by train")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint (default: best)")
    p.add_argument("--top", type=_positive(int), default=1,
                   help="classes to print per image (default: 1)")

    s = sub.add_parser("summary", help="layer table of a model")
    s.add_argument("--model", choices=tuple(_registry.MODELS), required=True)
    s.add_argument("--input-shape", type=_input_shape, required=True, metavar="H,W,C")
    s.add_argument("--num-classes", type=_positive(int), default=10,
                   help="classes (default: 10)")
    return parser


def _config_from_args(args) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if hasattr(args, f.name)}
    if given.get("resume"):
        from cnn_jax.train._experiment import resume_config

        if given.get("out") is None:
            raise ConfigError("train: --resume needs --out, the run folder to continue")
        return resume_config(given.pop("out"), **{k: v for k, v in given.items()
                                                  if k != "resume"})
    config = TrainConfig(**given)
    if config.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = config.replace(out=os.path.join("runs", f"{config.model_name}-"
                                                          f"{config.dataset}-{stamp}"))
    return config


def _train(args) -> int:
    config = _config_from_args(args)
    from cnn_jax.train import enable_compilation_cache, initialize_distributed

    if args.distributed:
        import jax

        jax.distributed.initialize()
    else:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    enable_compilation_cache()
    from cnn_jax.train import train_and_evaluate

    t0 = time.perf_counter()
    history = train_and_evaluate(config)
    s = history.summary
    if history.already_complete:
        print(f"{config.out}: already complete ({s['epochs']} epochs); raise --epochs to "
              f"continue")
        return 0
    if history.interrupted:
        print(f"stopped after {s['epochs']} epoch(s); continue with: cnn-jax train --out "
              f"{config.out} --resume")
        return 128 + history.signal
    print(f"{s['model']} on {s['dataset']}: test accuracy {s['test_accuracy']:.4f}, "
          f"test loss {s['test_loss']:.4f}, {s['epochs']} epochs, "
          f"{s['images_per_s'] or 0:.0f} images/s, {time.perf_counter() - t0:.1f} s; "
          f"outputs in {config.out}")
    return 0


def _evaluate(args) -> int:
    from cnn_jax.train import enable_compilation_cache, evaluate, load_run
    from cnn_jax.train._experiment import prepare_data

    enable_compilation_cache()
    model, run = load_run(args.out, which=args.checkpoint)
    config = run["config"]
    _, test = prepare_data(config)
    metrics = evaluate(model, test, batch_size=config.eval_batch_size, num_devices=1)
    print(json.dumps({"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"],
                      "examples": len(test), "step": run["step"], "model": run["model"],
                      "dataset": run["dataset"]}))
    return 0


def _predict(args) -> int:
    import numpy as np

    from cnn_jax.train import enable_compilation_cache, load_images, load_run, predict
    from cnn_jax.train._experiment import read_run

    run = read_run(args.out)
    if run["config"].task != "classify":
        raise ConfigError(f"predict: the run must be a classifier, got a {run['config'].task} "
                          f"run ({run['model']} on {run['dataset']}) in {args.out}")
    enable_compilation_cache()
    model, run = load_run(args.out, which=args.checkpoint)
    images = load_images(args.images, tuple(run["image_shape"]))
    probs = predict(model, images)
    names = run["class_names"]
    top = min(args.top, len(names))
    for path, p in zip(args.images, probs):
        best = np.argsort(-p, kind="stable")[:top]
        print(path + "\t" + "\t".join(f"{names[i]} {p[i]:.4f}" for i in best))
    return 0


def _summary(args) -> int:
    from cnn_jax.models import summary
    from cnn_jax.train import create_model

    model = create_model(args.model, args.num_classes, args.input_shape)
    try:
        table = summary(model, args.input_shape)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"summary: --input-shape {','.join(map(str, args.input_shape))} "
                          f"does not suit model {args.model!r}: {e}") from e
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cnn-jax``; returns the exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--import", dest="imports", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    for module in known.imports:  # before the parser: they may register choices
        try:
            importlib.import_module(module)
        except ImportError as e:
            print(f"cnn-jax: error: --import {module}: {e}", file=sys.stderr)
            return 1
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from cnn_jax.train._checkpoint import CheckpointError
    from cnn_jax.train._data import DatasetError

    handlers = {"train": _train, "evaluate": _evaluate, "predict": _predict,
                "summary": _summary}
    try:
        return handlers[args.command](args)
    except (ConfigError, DatasetError, CheckpointError) as e:
        print(f"cnn-jax {args.command}: error: {e}", file=sys.stderr)
        return 1
    except FloatingPointError as e:  # NonFiniteLossError: the last good checkpoint stays
        print(f"cnn-jax {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside a training loop (loading data, compiling)
        print(f"cnn-jax {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
