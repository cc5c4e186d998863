"""The ``cnn-jax`` command: a thin argparse layer over :mod:`cnn_jax.train`.

    cnn-jax train                       # the digits recipe, ~99% test accuracy
    cnn-jax train --model resnet18 --dataset cifar10 --data-dir ~/data --out runs/r18
    cnn-jax train --out runs/r18 --resume
    cnn-jax evaluate --out runs/digits
    cnn-jax predict img1.png img2.png --out runs/digits
    cnn-jax export --out runs/digits --format onnx
    cnn-jax summary --model lenet5 --input-shape 32,32,1
    cnn-jax bench --quick               # from a checkout: python -m benchmarks --quick

``train``'s flags are generated from :class:`~cnn_jax.train.TrainConfig`'s fields
(help text and default from one place); the model and data set choices come from
the registries. Printing help imports no jax.

Exit status: 0 done, 1 a user error (one line on stderr: a bad value, missing or
malformed data, a refused checkpoint, a run folder another command is writing, a
full or read-only disk), 2 a command-line syntax error, 130/143/129 a run stopped by
SIGINT/SIGTERM/SIGHUP (its state saved). A bug inside the library shows
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

from cnn_jax.train import DATASETS, MODELS, ConfigError, SignalGuard, TrainConfig

_TYPES = {"int": int, "float": float, "str": str}
# cnn_jax.export.FORMATS, spelled out so that printing help imports no jax.
EXPORT_FORMATS = ("stablehlo", "onnx", "torch")


def _input_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"--input-shape must be three positive ints H,W,C, got {text!r}"
        )
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
        return tuple(MODELS)
    if spec == "datasets":
        return tuple(DATASETS)
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
    lines += [f"  {e.name:<14} {e.help}" for e in MODELS.values()]
    lines += ["data sets:"]
    lines += [
        f"  {e.name:<14} {e.help}" + (" [--data-dir]" if e.needs_data_dir else "")
        for e in DATASETS.values()
    ]
    lines += [
        "environment:",
        "  CNN_JAX_COMPILATION_CACHE  compiled-program cache folder, or 'off' "
        "(default: ~/.cache/cnn_jax/jax)",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cnn-jax`` (train/evaluate/predict/export/summary)."""
    parser = argparse.ArgumentParser(
        prog="cnn-jax", description="Train and use convolutional networks written in JAX."
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it may register models or data sets); repeatable",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a model (default: the digits recipe)",
        epilog=_registry_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_flags(t)
    g = t.add_argument_group("multi-process runs (jax.distributed; see the README)")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="join the job described by the cluster's environment (SLURM, "
        "Kubernetes, ...): jax.distributed.initialize() with no arguments",
    )
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (default: None)")
    g.add_argument("--num-processes", type=int, default=None, help="process count (default: None)")
    g.add_argument(
        "--process-id", type=int, default=None, help="this process, 0..N-1 (default: None)"
    )
    g.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=120.0,
        metavar="SECONDS",
        help="give up (exit 1) when the coordinator and every process have not "
        "connected within this time (default: 120)",
    )
    g.add_argument(
        "--heartbeat-timeout",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="a process not heard from for this long is taken as dead: the others "
        "exit 1 naming it and the last complete checkpoint (default: 10)",
    )

    e = sub.add_parser("evaluate", help="test loss and accuracy of a trained run")
    e.add_argument("--out", required=True, help="the run folder written by train")
    e.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="which checkpoint (default: best)",
    )

    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, help="the run folder written by train")
    p.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="which checkpoint (default: best)",
    )
    p.add_argument(
        "--top", type=_positive(int), default=1, help="classes to print per image (default: 1)"
    )

    x = sub.add_parser(
        "export",
        help="write a trained run as StableHLO, ONNX or PyTorch weights",
        description="Export a run's model for inference (eval mode). StableHLO "
        "and ONNX take float32 (N, H, W, C) images in [0, 1], "
        "channels last; torch writes a torchvision-named "
        "state_dict as .pt and .safetensors.",
    )
    x.add_argument("--out", required=True, help="the run folder written by train")
    x.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="stablehlo (jax.export), onnx (opset 17) or torch (state_dict)",
    )
    x.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="which checkpoint (default: best)",
    )
    size = x.add_mutually_exclusive_group()
    size.add_argument(
        "--batch",
        type=_positive(int),
        default=None,
        metavar="N",
        help="a fixed batch size (default: any, see --dynamic-batch)",
    )
    size.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="a symbolic batch dimension: any batch size runs (the default)",
    )
    x.add_argument(
        "--dest",
        default=None,
        metavar="FILE",
        help="the file to write (default: OUT/export/model.stablehlo, model.onnx "
        "or model.pt; torch also writes FILE's .safetensors beside it)",
    )

    # Listed for help only: _main forwards everything after "bench" to the benchmarks.
    sub.add_parser(
        "bench",
        add_help=False,
        help="run the benchmarks from a checkout of the repository (the same as "
        "python -m benchmarks; cnn-jax bench --help lists its flags)",
    )

    s = sub.add_parser("summary", help="layer table of a model")
    s.add_argument("--model", choices=tuple(MODELS), required=True)
    s.add_argument("--input-shape", type=_input_shape, required=True, metavar="H,W,C")
    s.add_argument("--num-classes", type=_positive(int), default=10, help="classes (default: 10)")
    return parser


def _config_from_args(args) -> TrainConfig:
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if hasattr(args, f.name)
    }
    if given.get("resume"):
        from cnn_jax.train import resume_config

        if given.get("out") is None:
            raise ConfigError("train: --resume needs --out, the run folder to continue")
        return resume_config(given.pop("out"), **{k: v for k, v in given.items() if k != "resume"})
    config = TrainConfig(**given)
    if config.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = config.replace(
            out=os.path.join("runs", f"{config.model_name}-{config.dataset}-{stamp}")
        )
    return config


def _train(args) -> int:
    config = _config_from_args(args)
    from cnn_jax.train import enable_compilation_cache, initialize_distributed

    initialize_distributed(
        args.coordinator,
        args.num_processes,
        args.process_id,
        auto=args.distributed,
        connect_timeout=args.connect_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
    )
    enable_compilation_cache()
    from cnn_jax.train import train_and_evaluate

    t0 = time.perf_counter()
    history = train_and_evaluate(config)
    s = history.summary
    if history.already_complete:
        print(f"{config.out}: already complete ({s['epochs']} epochs); raise --epochs to continue")
        return 0
    if history.interrupted:
        if history.step:  # fit printed what it saved; say how to go on
            print(
                f"stopped after {s['epochs']} epoch(s); continue with: cnn-jax train --out "
                f"{config.out} --resume"
            )
        return 128 + history.signal
    if history.signal:  # arrived while the finished run wrote its last checkpoint
        print(
            f"{config.out}: complete ({s['epochs']} epochs, test accuracy "
            f"{s['test_accuracy']:.4f}) and saved; exiting on "
            f"{signal.Signals(history.signal).name}"
        )
        return 128 + history.signal
    print(
        f"{s['model']} on {s['dataset']}: test accuracy {s['test_accuracy']:.4f}, "
        f"test loss {s['test_loss']:.4f}, {s['epochs']} epochs, "
        f"{s['images_per_s'] or 0:.0f} images/s, {time.perf_counter() - t0:.1f} s; "
        f"outputs in {config.out}"
    )
    return 0


def _evaluate(args) -> int:
    from cnn_jax.train import enable_compilation_cache, evaluate, load_run, prepare_data

    enable_compilation_cache()
    model, run = load_run(args.out, which=args.checkpoint)
    config = run["config"]
    _, test = prepare_data(config)
    metrics = evaluate(model, test, batch_size=config.eval_batch_size, num_devices=1)
    print(
        json.dumps(
            {
                "test_accuracy": metrics["accuracy"],
                "test_loss": metrics["loss"],
                "examples": len(test),
                "step": run["step"],
                "model": run["model"],
                "dataset": run["dataset"],
            }
        )
    )
    return 0


def _predict(args) -> int:
    import numpy as np

    from cnn_jax.train import enable_compilation_cache, load_images, load_run, predict, read_run

    run = read_run(args.out)
    if run["config"].task != "classify":
        raise ConfigError(
            f"predict: the run must be a classifier, got a {run['config'].task} "
            f"run ({run['model']} on {run['dataset']}) in {args.out}"
        )
    enable_compilation_cache()
    model, run = load_run(args.out, which=args.checkpoint)
    images = load_images(args.images, tuple(run["image_shape"]), input=run.get("input"))
    probs = predict(model, images)
    names = run["class_names"]
    top = min(args.top, len(names))
    for path, p in zip(args.images, probs):
        best = np.argsort(-p, kind="stable")[:top]
        print(path + "\t" + "\t".join(f"{names[i]} {p[i]:.4f}" for i in best))
    return 0


def _export(args) -> int:
    if args.format == "torch" and args.batch is not None:
        raise ConfigError(
            "export: --batch applies to --format stablehlo and onnx; torch "
            "weights have no batch size"
        )
    from cnn_jax.export import export_run

    try:
        paths = export_run(
            args.out, args.format, batch=args.batch, dest=args.dest, which=args.checkpoint
        )
    except (ImportError, NotImplementedError, OSError) as e:
        raise ConfigError(str(e)) from e
    batch = "any batch size" if args.batch is None else f"batch {args.batch}"
    for path in paths:
        print(f"wrote {path}" + ("" if args.format == "torch" else f" ({batch})"))
    return 0


def _summary(args) -> int:
    from flax import nnx

    from cnn_jax.models import summary
    from cnn_jax.train import MODELS

    # Shapes only: the table needs no parameter values, so none are computed.
    model = nnx.eval_shape(
        lambda: MODELS[args.model].build(args.num_classes, args.input_shape, rngs=nnx.Rngs(0))
    )
    try:
        table = summary(model, args.input_shape)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"summary: --input-shape {','.join(map(str, args.input_shape))} "
            f"does not suit model {args.model!r}: {e}"
        ) from e
    print(table)
    return 0


def _bench_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``bench`` when that is the command (``--import M`` may come
    first), else None: they go to the benchmarks' own parser untouched."""
    i = 0
    while i < len(argv) and argv[i].startswith("--import"):
        i += 1 if "=" in argv[i] else 2
    return argv[i + 1 :] if i < len(argv) and argv[i] == "bench" else None


def _bench(argv: list[str]) -> int:
    """``cnn-jax bench ARGS``: ``python -m benchmarks ARGS``. The benchmarks are not part
    of the installed package; they are imported from the current folder (a checkout)."""
    import importlib.util

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec("benchmarks._cli") is not None
    except ImportError:
        found = False
    if not found:
        raise ConfigError(
            f"the benchmarks are not part of the installed package and there "
            f"is no benchmarks/ folder in {os.getcwd()}: run cnn-jax bench, or "
            f"python -m benchmarks, from the root of a checkout of the repository"
        )
    from benchmarks import main as bench_main

    # Long runs stop at once on Ctrl-C or SIGTERM (no state to save, unlike training).
    try:
        previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
            signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL),
        }
    except ValueError:  # not the main thread: handlers cannot change
        previous = {}
    try:
        return bench_main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cnn-jax``; returns the exit status (see the module docstring).

    From the first line on, SIGINT/SIGTERM only set a flag (a Ctrl-C while jax loads
    must not land inside its C++ callbacks): the training loop stops between steps,
    every other phase at its end, with exit status 128 + the signal.
    """
    with SignalGuard() as guard:
        try:
            code = _main(sys.argv[1:] if argv is None else list(argv), guard)
        except KeyboardInterrupt:  # raised by a handler that is not ours
            guard.signal = guard.signal or signal.SIGINT
            code = 0
        if guard.stop and code in (0, 1):
            print(f"cnn-jax: interrupted ({guard.name})", file=sys.stderr)
            return 128 + guard.signal
        return code


def _main(argv: list[str], guard) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--import", dest="imports", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    for module in known.imports:  # before the parser: they may register choices
        try:
            importlib.import_module(module)
        except ImportError as e:
            print(f"cnn-jax: error: --import {module}: {e}", file=sys.stderr)
            return 1
    bench = _bench_argv(argv)
    if bench is not None:
        try:
            return _bench(bench)
        except ConfigError as e:
            print(f"cnn-jax bench: error: {e}", file=sys.stderr)
            return 1
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from cnn_jax.train import CheckpointError, DatasetError, RunFolderError

    if guard.stop:
        return 0  # main reports the interruption
    handlers = {
        "train": _train,
        "evaluate": _evaluate,
        "predict": _predict,
        "export": _export,
        "summary": _summary,
    }
    try:
        return handlers[args.command](args)
    except (ConfigError, DatasetError, CheckpointError, RunFolderError, FloatingPointError) as e:
        # FloatingPointError: NonFiniteLossError (the last good checkpoint stays)
        if guard.stop:  # e.g. a half-read file after the signal: report the signal
            return 1
        print(f"cnn-jax {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
