"""Training throughput: cnn_jax (fit) vs the same network and optimiser in plain PyTorch.

For each case: steady-state training images/s (the first step excluded) and
time-to-first-step (JAX: tracing + compilation + one step; PyTorch: one eager step),
both measured in this one run on this machine; the default ``cnn-jax train`` run
(wall time and accuracy over seeds, cold and warm compilation cache) beside the
hand-written anchors in ``shared/anchors/``; help latency; the checkpoint cost.
Where a GPU is present, ResNet-50 at 224x224 in bf16 on synthetic data: images/s and MFU (training FLOPs = 3 x forward,
against a measured bf16 matmul peak), next to PyTorch on the same GPU if it has CUDA.

    python benchmarks/train.py            # writes benchmarks/results/train.json
    python benchmarks/train.py --quick    # smaller; writes results/quick/train.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import cnn_jax
from cnn_jax.models import LeNet5, ResNet50, SimpleCNN
from cnn_jax.train import Dataset, TrainConfig, fit

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- PyTorch twins


def torch_lenet5():
    import torch.nn as tnn

    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
        tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))


def torch_simple_cnn(width: int, in_channels: int = 1, num_classes: int = 10):
    import torch.nn as tnn

    layers, c = [], in_channels
    for i in range(1, 11):
        out = width * 2 ** sum(i > p for p in (4, 6, 8))
        layers += [tnn.Conv2d(c, out, 3, padding=1, bias=False), tnn.BatchNorm2d(out),
                   tnn.ReLU()]
        if i in (4, 6, 8):
            layers.append(tnn.MaxPool2d(2))
        c = out
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(c, num_classes)]
    return tnn.Sequential(*layers)


def torch_train(model, images, labels, batch_size, steps, lr, weight_decay, channels_last):
    """AdamW + cosine-free constant LR loop; returns (time_to_first_step, images/s)."""
    import torch

    torch.manual_seed(0)
    x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y_all = torch.from_numpy(labels.astype(np.int64))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))

    def step(i):
        idx = torch.from_numpy(order[(i * batch_size) % (len(images) - batch_size + 1):][
            :batch_size])
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


# ---------------------------------------------------------------- cases


def jax_case(model, images, labels, batch_size, epochs, lr, weight_decay):
    train = Dataset(images, labels, 10, "synthetic")
    test = Dataset(images[:batch_size], labels[:batch_size], 10, "synthetic")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, eval_batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, schedule="constant", warmup=0.0,
                      optimizer="adamw", augment=False, quiet=True, num_devices=1)
    s = fit(model, train, test, cfg).summary
    return s["time_to_first_step_s"], s["images_per_s"]


def run_cpu_cases(quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    results = []
    cases = [
        ("lenet5", (32, 32, 1), 128, lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)),
         torch_lenet5),
        ("simple_cnn_w32", (8, 8, 1), 64,
         lambda: SimpleCNN(10, in_channels=1, width=32, rngs=nnx.Rngs(0)),
         lambda: torch_simple_cnn(32)),
    ]
    n_images = 1024 if quick else 4096
    for name, shape, bs, make_jax, make_torch in cases:
        images = rng.uniform(size=(n_images, *shape)).astype(np.float32)
        labels = rng.integers(0, 10, n_images).astype(np.int32)
        steps = n_images // bs * (1 if quick else 2)
        jt, jips = jax_case(make_jax(), images, labels, bs, 1 if quick else 2, 1e-3, 5e-4)
        best_torch = None
        for channels_last in (False, True):
            tt, tips = torch_train(make_torch(), images, labels, bs, steps, 1e-3, 5e-4,
                                   channels_last)
            if best_torch is None or tips > best_torch[1]:
                best_torch = (tt, tips, channels_last)
        h, w, c = shape
        row = {
            "case": f"train_{name}_{bs}x{h}x{w}x{c}_float32",
            "jax_images_per_s": jips, "torch_images_per_s": best_torch[1],
            "ratio_jax_over_torch": jips / best_torch[1],
            "jax_time_to_first_step_s": jt, "torch_time_to_first_step_s": best_torch[0],
            "torch_channels_last": best_torch[2],
        }
        results.append(row)
        print(f"{row['case']:<40} cnn_jax {jips:9.0f} img/s  torch {best_torch[1]:9.0f} img/s  "
              f"ratio {row['ratio_jax_over_torch']:.2f}x  first step {jt:.2f} s vs "
              f"{best_torch[0]:.2f} s", flush=True)
    return results


ANCHORS = os.path.join(HERE, "..", "..", "shared", "anchors")


def _timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, proc


def _accuracy(text: str) -> float | None:
    match = re.search(r"acc(?:uracy)? ([0-9.]+)", text)
    return float(match.group(1)) if match else None


def run_main_job(seeds: list[int], anchors: str) -> dict:
    """``cnn-jax train`` with no arguments, as a user runs it (a new process, imports and
    compilation included, a cold compilation cache), beside the two hand-written anchors
    in the same loop: one round per seed runs torch anchor, flax anchor, cnn-jax."""
    import tempfile

    cli = [sys.executable, "-m", "cnn_jax.cli"]
    tmp = tempfile.mkdtemp(prefix="cnn_jax_bench_")
    rows = []
    for seed in seeds:
        row = {"seed": seed}
        for name in ("digits_torch", "digits_flax"):
            path = os.path.join(anchors, name + ".py")
            if os.path.exists(path):
                wall, proc = _timed([sys.executable, path])
                row[name] = {"wall_s": wall, "test_accuracy": _accuracy(proc.stdout)}
        env = dict(os.environ, CNN_JAX_COMPILATION_CACHE=os.path.join(tmp, f"cache{seed}"))
        out = os.path.join(tmp, f"run{seed}")
        wall, proc = _timed([*cli, "train", "--quiet", "--seed", str(seed), "--out", out], env)
        if proc.returncode:
            raise RuntimeError(f"cnn-jax train failed: {proc.stderr[-2000:]}")
        summary = json.load(open(os.path.join(out, "summary.json")))
        row["cnn_jax"] = {"wall_s": wall, "test_accuracy": summary["test_accuracy"],
                          "time_to_first_step_s": summary["time_to_first_step_s"]}
        rows.append(row)
        print(f"seed {seed}: " + "  ".join(
            f"{k} {v['wall_s']:.1f} s acc {v['test_accuracy']}" for k, v in row.items()
            if isinstance(v, dict)), flush=True)
    # Warm compilation cache: the last seed's cache, a new process.
    out = os.path.join(tmp, "warm")
    wall, proc = _timed([*cli, "train", "--quiet", "--seed", str(seeds[-1]), "--out", out], env)
    warm = json.load(open(os.path.join(out, "summary.json")))
    result = {"rounds": rows, "warm_cache": {"wall_s": wall, "time_to_first_step_s":
                                             warm["time_to_first_step_s"]}}

    def mean(key, field):
        values = [r[key][field] for r in rows if key in r and r[key][field] is not None]
        return sum(values) / len(values) if values else None

    for key in ("cnn_jax", "digits_torch", "digits_flax"):
        result[f"{key}_mean_wall_s"] = mean(key, "wall_s")
        result[f"{key}_mean_accuracy"] = mean(key, "test_accuracy")
    for anchor in ("digits_torch", "digits_flax"):
        if result[f"{anchor}_mean_wall_s"]:
            result[f"ratio_cnn_jax_over_{anchor}"] = (result["cnn_jax_mean_wall_s"]
                                                      / result[f"{anchor}_mean_wall_s"])
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2), flush=True)
    return result


def run_help(repeats: int = 5) -> dict:
    """Wall time of ``cnn-jax --help`` and ``cnn-jax train --help`` (median of a few)."""
    import statistics

    exe = [sys.executable, "-m", "cnn_jax.cli"]
    row = {}
    for name, args in (("help_s", ["--help"]), ("train_help_s", ["train", "--help"])):
        row[name] = statistics.median(_timed([*exe, *args])[0] for _ in range(repeats))
    row["python_startup_s"] = statistics.median(
        _timed([sys.executable, "-c", "pass"])[0] for _ in range(repeats))
    print(f"cnn-jax --help {row['help_s']:.2f} s, train --help {row['train_help_s']:.2f} s "
          f"(python itself {row['python_startup_s']:.2f} s)", flush=True)
    return row


def run_checkpoint_cost(repeats: int = 2) -> dict:
    """The default recipe in-process, with and without an out folder (checkpoint, metrics,
    summary, plots): the difference is what the side jobs cost the run."""
    import statistics
    import tempfile

    from cnn_jax.train import create_model, load_digits

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
    row = {"fit_s_without_out": no_out, "fit_s_with_out": with_out,
           "side_jobs_fraction": (with_out - no_out) / with_out}
    print(f"fit without out {no_out:.2f} s, with checkpoints/metrics/plots {with_out:.2f} s: "
          f"side jobs {100 * row['side_jobs_fraction']:.1f}% of the run", flush=True)
    return row


def bf16_matmul_peak() -> float:
    n = 8192
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(10):
        r = f(a)
    r.block_until_ready()
    return 10 * 2 * n ** 3 / (time.perf_counter() - t0)


def run_gpu_resnet50(batch_size: int = 128, steps: int = 30) -> dict:
    """ResNet-50, 224x224, bf16 compute, synthetic data (only where a GPU is present)."""
    model = ResNet50(1000, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    fwd_flops = cnn_jax.summary(model, (224, 224, 3)).total_flops  # per image
    rng = np.random.default_rng(0)
    n = batch_size * steps
    images = rng.uniform(size=(n, 224, 224, 3)).astype(np.float32)
    labels = rng.integers(0, 1000, n).astype(np.int32)
    train = Dataset(images, labels, 1000, "synthetic")
    cfg = TrainConfig(epochs=1, batch_size=batch_size, eval_batch_size=batch_size, lr=0.1,
                      optimizer="sgd", dtype="bfloat16", augment=False, quiet=True)
    s = fit(model, train, train.take(batch_size), cfg).summary
    peak = bf16_matmul_peak()
    row = {"case": f"train_resnet50_{batch_size}x224x224x3_bfloat16",
           "jax_images_per_s": s["images_per_s"], "jax_time_to_first_step_s":
           s["time_to_first_step_s"], "forward_flops_per_image": fwd_flops,
           "measured_bf16_peak_flops": peak,
           "mfu": 3 * fwd_flops * s["images_per_s"] / peak}
    try:
        import torch

        if torch.cuda.is_available():
            row["torch_images_per_s"] = _torch_resnet50_gpu(batch_size, steps)
    except ImportError:
        pass
    print(json.dumps(row, indent=2), flush=True)
    return row


def _torch_resnet50_gpu(batch_size, steps):  # pragma: no cover - GPU only
    import torch
    import torchvision  # noqa: F401  (only where installed)

    model = torchvision.models.resnet50().cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch_size, 3, 224, 224, device="cuda").to(
        memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device="cuda")
    for i in range(steps + 1):
        if i == 1:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-digits", action="store_true",
                        help="skip the main-job comparison against the anchors")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the main-job rounds")
    parser.add_argument("--anchors", default=ANCHORS,
                        help="folder with digits_torch.py and digits_flax.py")
    args = parser.parse_args()
    import torch

    header = {
        "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(), "jax": jax.__version__,
        "flax": __import__("flax").__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    print("# cnn_jax training benchmark: " + ", ".join(f"{k}={v}" for k, v in header.items()))
    result = {"header": header, "help": run_help()}
    if not args.skip_digits:
        seeds = [int(s) for s in args.seeds.split(",")][:1 if args.quick else None]
        result["main_job"] = run_main_job(seeds, args.anchors)
    result["checkpoint_cost"] = run_checkpoint_cost(1 if args.quick else 2)
    result["cases"] = run_cpu_cases(args.quick)
    if jax.devices()[0].platform == "gpu":
        result["gpu_resnet50"] = run_gpu_resnet50()
    else:
        result["gpu_resnet50"] = "not run: no GPU on this machine"
    folder = os.path.join(HERE, "results", "quick" if args.quick else "")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "train.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
