"""The ``train`` suite: ``cnn_jax.train`` as a user runs it, against PyTorch.

* **The main job**: ``cnn-jax train`` with no arguments, a new process each time
  (imports, data, compilation, training, evaluation, checkpoint and plots included),
  with an empty compilation cache, beside the hand-written anchors of
  ``shared/anchors/`` in the same loop (one round per seed; the PyTorch anchor at
  its default thread count and at one thread, the faster counting); then once with a
  warm cache (time to first step).
* **Help latency**: ``cnn-jax --help`` and ``cnn-jax train --help``.
* **Side jobs**: the default recipe in-process with and without an out folder
  (checkpoints, metrics, summary, plots).
* **The fit path**: steady-state images/s of ``cnn_jax.train.fit`` (the first step
  excluded) against the same network and optimiser (AdamW) written in plain PyTorch
  (rows ``train_fit_*``; one run each, so no spread: their verdict is "single run").

``--quick`` keeps the help latency and one small ``fit`` case. Whole-network step
times with spreads are the ``models`` suite.

Run: ``python -m benchmarks --suite train`` (``python benchmarks/train.py`` forwards
there; ``--skip-digits`` skips the main job, ``--seeds 0,1`` are its seeds).
"""

from __future__ import annotations

if __name__ == "__main__":  # `python benchmarks/train.py`, as before
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks._cli import legacy_script

    sys.exit(legacy_script("train", sys.argv[1:]))

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks._suite import add_rates, add_ratios

HERE = os.path.dirname(os.path.abspath(__file__))
ANCHORS = os.path.join(HERE, "..", "..", "shared", "anchors")
# Set by the command line (benchmarks/_cli.py): the main job's seeds, None to skip it.
OPTIONS = {"seeds": (0, 1), "anchors": ANCHORS}


# ---------------------------------------------------------------- PyTorch twins


def torch_lenet5():
    import torch.nn as tnn

    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Flatten(),
        tnn.Linear(400, 120),
        tnn.ReLU(),
        tnn.Linear(120, 84),
        tnn.ReLU(),
        tnn.Linear(84, 10),
    )


def torch_simple_cnn(width: int, in_channels: int = 1, num_classes: int = 10):
    import torch.nn as tnn

    layers, c = [], in_channels
    for i in range(1, 11):
        out = width * 2 ** sum(i > p for p in (4, 6, 8))
        layers += [tnn.Conv2d(c, out, 3, padding=1, bias=False), tnn.BatchNorm2d(out), tnn.ReLU()]
        if i in (4, 6, 8):
            layers.append(tnn.MaxPool2d(2))
        c = out
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(c, num_classes)]
    return tnn.Sequential(*layers)


def torch_train(model, images, labels, batch_size, steps, lr, weight_decay, channels_last):
    """AdamW at a constant learning rate; returns (time_to_first_step_s, images/s)."""
    import torch

    torch.manual_seed(0)
    x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y_all = torch.from_numpy(labels.astype(np.int64))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    order = np.random.default_rng(0).permutation(len(images))

    def step(i):
        idx = torch.from_numpy(
            order[(i * batch_size) % (len(images) - batch_size + 1) :][:batch_size]
        )
        x, y = x_all[idx], y_all[idx]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    step(0).item()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps):
        loss = step(i)
    loss.item()
    return first, (steps - 1) * batch_size / (time.perf_counter() - t0)


# ---------------------------------------------------------------- the fit path


def _fit_case(model, images, labels, batch_size, epochs, lr, weight_decay):
    from cnn_jax.train import Dataset, TrainConfig, fit

    train = Dataset(images, labels, 10, "synthetic")
    test = Dataset(images[:batch_size], labels[:batch_size], 10, "synthetic")
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        schedule="constant",
        warmup=0.0,
        optimizer="adamw",
        augment=False,
        quiet=True,
        num_devices=1,
    )
    s = fit(model, train, test, cfg).summary
    return s["time_to_first_step_s"], s["images_per_s"]


def _single(ms: float, first_s: float, **info) -> dict:
    """A timing of one run (no spread): quartiles and extremes equal the value."""
    return dict(
        median_ms=ms, q1_ms=ms, q3_ms=ms, min_ms=ms, max_ms=ms, n=1, compile_s=first_s, **info
    )


def fit_rows(ctx) -> list[dict]:
    from flax import nnx

    from cnn_jax.models import LeNet5, SimpleCNN

    cases = [
        (
            "lenet5",
            (32, 32, 1),
            128,
            lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)),
            torch_lenet5,
        )
    ]
    if not ctx.quick:
        cases.append(
            (
                "simple_cnn_w32",
                (8, 8, 1),
                64,
                lambda: SimpleCNN(10, in_channels=1, width=32, rngs=nnx.Rngs(0)),
                lambda: torch_simple_cnn(32),
            )
        )
    n_images = 512 if ctx.quick else 2048
    epochs = 1 if ctx.quick else 2
    rng = np.random.default_rng(0)
    rows = []
    for name, shape, bs, make_jax, make_torch in cases:
        images = rng.uniform(size=(n_images, *shape)).astype(np.float32)
        labels = rng.integers(0, 10, n_images).astype(np.int32)
        steps = n_images // bs * epochs
        first, ips = _fit_case(make_jax(), images, labels, bs, epochs, 1e-3, 5e-4)
        impls = {"cnn_jax": _single(1e3 * bs / ips, first)}
        if ctx.torch is not None:
            best = None
            for threads in ctx.torch_threads:
                ctx.torch.set_num_threads(threads)
                for channels_last in (False, True):
                    tfirst, tips = torch_train(
                        make_torch(), images, labels, bs, steps, 1e-3, 5e-4, channels_last
                    )
                    if best is None or tips > best[1]:
                        best = (tfirst, tips, channels_last, threads)
            ctx.torch.set_num_threads(max(ctx.torch_threads))
            impls["torch"] = _single(
                1e3 * bs / best[1], best[0], channels_last=best[2], threads=best[3]
            )
        h, w, c = shape
        row = {
            "suite": "train",
            "case": f"train_fit_{name}_{bs}x{h}x{w}x{c}_f32",
            "what": f"cnn_jax.train.fit vs a PyTorch loop, AdamW, {steps} steps",
            "dtype": "float32",
            "pass": "train step",
            "flops": None,
            "items": bs,
            "impls": impls,
        }
        add_rates(row)
        add_ratios(row)
        rows.append(row)
        ctx.log(
            f"  {row['case']:<44} cnn_jax {ips:,.0f} img/s, torch "
            f"{row['impls'].get('torch', {}).get('items_per_s', 0):,.0f} img/s; first "
            f"step {first:.2f} s"
        )
    return rows


# ---------------------------------------------------------------- the command


def _timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc


def _accuracy(text: str) -> float | None:
    match = re.search(r"acc(?:uracy)? ([0-9.]+)", text)
    return float(match.group(1)) if match else None


def _cli_env(**extra) -> dict:
    """The environment of a ``cnn-jax`` subprocess: this checkout's cnn_jax first."""
    root = os.path.dirname(HERE)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def _torch_anchor(path: str) -> dict:
    """The PyTorch anchor at 1 thread, then at its default thread count (stopped once it
    has taken twice as long: it cannot win then); the faster run counts. On a loaded
    2-core machine the default's OpenMP barriers made it 3-4x slower than 1 thread."""
    wall1, proc1 = _timed([sys.executable, path], dict(os.environ, OMP_NUM_THREADS="1"))
    out = {
        "wall_s": wall1,
        "test_accuracy": _accuracy(proc1.stdout),
        "wall_s_1_thread": wall1,
        "threads": 1,
    }
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, path], capture_output=True, text=True, timeout=2 * wall1
        )
        wall = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        out["wall_s_default_threads"] = f"> {2 * wall1:.1f} (stopped)"
        return out
    out["wall_s_default_threads"] = wall
    if wall < wall1:
        out.update(wall_s=wall, test_accuracy=_accuracy(proc.stdout), threads="default")
    return out


def run_main_job(ctx, seeds, anchors: str) -> dict:
    """``cnn-jax train`` with no arguments, as a user runs it (a new process, imports and
    compilation included, a cold compilation cache), beside the two hand-written anchors
    in the same loop: one round per seed runs torch anchor, flax anchor, cnn-jax."""
    cli = [sys.executable, "-m", "cnn_jax.cli"]
    tmp = tempfile.mkdtemp(prefix="cnn_jax_bench_")
    rows = []
    env = None
    for seed in seeds:
        row = {"seed": seed}
        for name in ("digits_torch", "digits_flax"):
            path = os.path.join(anchors, name + ".py")
            if not os.path.exists(path):
                continue
            if name == "digits_torch":  # at 1 thread and at its default: the faster counts
                row[name] = _torch_anchor(path)
                continue
            wall, proc = _timed([sys.executable, path])
            row[name] = {"wall_s": wall, "test_accuracy": _accuracy(proc.stdout)}
        env = _cli_env(CNN_JAX_COMPILATION_CACHE=os.path.join(tmp, f"cache{seed}"))
        out = os.path.join(tmp, f"run{seed}")
        wall, proc = _timed([*cli, "train", "--quiet", "--seed", str(seed), "--out", out], env)
        if proc.returncode:
            raise RuntimeError(f"cnn-jax train failed: {proc.stderr[-2000:]}")
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        row["cnn_jax"] = {
            "wall_s": wall,
            "test_accuracy": summary["test_accuracy"],
            "time_to_first_step_s": summary["time_to_first_step_s"],
        }
        rows.append(row)
        ctx.log(
            f"  main job, seed {seed}: "
            + "  ".join(
                f"{k} {v['wall_s']:.1f} s acc {v['test_accuracy']}"
                for k, v in row.items()
                if isinstance(v, dict)
            )
        )
    # Warm compilation cache: the last seed's cache, a new process.
    out = os.path.join(tmp, "warm")
    wall, proc = _timed([*cli, "train", "--quiet", "--seed", str(seeds[-1]), "--out", out], env)
    with open(os.path.join(out, "summary.json")) as f:
        warm = json.load(f)
    result = {
        "rounds": rows,
        "warm_cache": {"wall_s": wall, "time_to_first_step_s": warm["time_to_first_step_s"]},
    }

    def mean(key, field):
        values = [r[key][field] for r in rows if key in r and r[key][field] is not None]
        return sum(values) / len(values) if values else None

    for key in ("cnn_jax", "digits_torch", "digits_flax"):
        result[f"{key}_mean_wall_s"] = mean(key, "wall_s")
        result[f"{key}_mean_accuracy"] = mean(key, "test_accuracy")
    for anchor in ("digits_torch", "digits_flax"):
        if result[f"{anchor}_mean_wall_s"]:
            result[f"ratio_cnn_jax_over_{anchor}"] = (
                result["cnn_jax_mean_wall_s"] / result[f"{anchor}_mean_wall_s"]
            )
    return result


def run_help(repeats: int) -> dict:
    """Wall time of ``cnn-jax --help`` and ``cnn-jax train --help`` (median of a few)."""
    exe = [sys.executable, "-m", "cnn_jax.cli"]
    env = _cli_env()
    row = {}
    for name, args in (("help_s", ["--help"]), ("train_help_s", ["train", "--help"])):
        row[name] = statistics.median(_timed([*exe, *args], env)[0] for _ in range(repeats))
    row["python_startup_s"] = statistics.median(
        _timed([sys.executable, "-c", "pass"])[0] for _ in range(repeats)
    )
    return row


def run_checkpoint_cost(repeats: int) -> dict:
    """The default recipe in-process, with and without an out folder (checkpoint, metrics,
    summary, plots): the difference is what the side jobs cost the run."""
    from cnn_jax.train import TrainConfig, create_model, fit, load_digits

    train, test = load_digits()
    times = {"no_out": [], "out": []}
    for i in range(repeats + 1):  # the first round compiles: not counted
        for key in ("no_out", "out"):
            out = tempfile.mkdtemp(prefix="cnn_jax_ckpt_") if key == "out" else None
            model = create_model("digits_cnn", 10, (8, 8, 1))
            t0 = time.perf_counter()
            fit(model, train, test, TrainConfig(quiet=True, out=out), flip=False)
            if i:
                times[key].append(time.perf_counter() - t0)
    no_out, with_out = statistics.median(times["no_out"]), statistics.median(times["out"])
    return {
        "fit_s_without_out": no_out,
        "fit_s_with_out": with_out,
        "side_jobs_fraction": (with_out - no_out) / with_out,
    }


def run(ctx) -> list[dict]:
    records = ctx.records.setdefault("train", {})
    records["help"] = run_help(3 if ctx.quick else 5)
    h = records["help"]
    ctx.log(
        f"  cnn-jax --help {h['help_s']:.2f} s, train --help {h['train_help_s']:.2f} s "
        f"(python itself {h['python_startup_s']:.2f} s)"
    )
    if not ctx.quick and OPTIONS["seeds"]:
        records["main_job"] = run_main_job(ctx, list(OPTIONS["seeds"]), OPTIONS["anchors"])
    if not ctx.quick:
        c = records["checkpoint_cost"] = run_checkpoint_cost(1)
        ctx.log(
            f"  fit without out {c['fit_s_without_out']:.2f} s, with checkpoints/metrics/"
            f"plots {c['fit_s_with_out']:.2f} s: side jobs "
            f"{100 * c['side_jobs_fraction']:.1f}% of the run"
        )
    return fit_rows(ctx)
