"""Streamed input (Grain): decode throughput vs PyTorch, step time vs in-memory, memory.

Three measurements, each on image folders this script generates in a temporary
folder (smooth random JPEGs, so that they decode like photographs rather than noise):

1. **Decode + augment throughput**: one epoch over 4,000 256x256 JPEGs through the
   ImageNet training transform (random-resized crop to 224 and flip, Pillow), in
   batches of 64, by cnn_jax's stream (``ImageStream.batches``: Grain worker
   processes) and by a PyTorch ``DataLoader`` whose ``Dataset`` calls the very same
   per-image function, with the same worker count. Images/s from the first batch
   to the last after a few warm-up batches (workers started; their start-up is
   reported apart), best of two alternated rounds each.
2. **Step time**: ResNet-18 trained with ``fit`` on a streamed folder against the same
   images decoded into memory first (``load_image_folder``): the same batches, the
   same program; the second epoch's images/s (the first shares the CPU with the
   workers' start-up), alternated runs, with the input wait and the decoding's share
   of a step's CPU (robust to a busy machine).
3. **Peak memory**: the peak RSS (VmHWM) of ``cnn-jax train --dataset folder`` (a new
   process, its worker processes not counted) on 600 and on 6,000 images, both runs
   90-odd steps long; the in-memory loader's on the same folders for contrast.

Run: ``python benchmarks/stream.py`` (about 5 minutes on 2 cores; ``--quick``: smaller
folders, a smoke run). Results: ``benchmarks/results/stream.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---------------------------------------------------------------- data


def make_folder(
    root: str, n: int, size: int, *, classes: int = 10, val: int = 0, seed: int = 0
) -> str:
    """``root/train/<class>/*.jpg`` (and ``val/``): smooth colour fields with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for split, count in (("train", n), ("val", val)):
        for k in range(count):
            c = k % classes
            os.makedirs(os.path.join(root, split, f"c{c:02d}"), exist_ok=True)
            a, b, p = rng.uniform(0, 6, 3)
            base = np.stack([np.sin(a * xx + p), np.cos(b * yy - p), np.sin((a + b) * xx * yy)], -1)
            img = (127 + 100 * base + rng.normal(0, 12, base.shape)).clip(0, 255)
            Image.fromarray(img.astype(np.uint8)).save(
                os.path.join(root, split, f"c{c:02d}", f"{k:05d}.jpg"), quality=90
            )
    return root


# ---------------------------------------------------------------- 1. throughput


def _torch_loader(stream, batch_size, workers, seed):
    import torch
    from torch.utils.data import DataLoader, Dataset

    order = np.random.default_rng([seed, 0]).permutation(len(stream)).tolist()

    class Images(Dataset):  # the same per-image function as cnn_jax's workers
        def __len__(self):
            return len(stream)

        def __getitem__(self, j):
            image = stream.load(j, np.random.default_rng([seed, 0, j]))
            return torch.from_numpy(np.array(image)), int(stream.labels[j])

    return DataLoader(
        Images(), batch_size=batch_size, sampler=order, num_workers=workers, drop_last=True
    )


def _cpu_s() -> float:
    """CPU seconds used so far by this process and its children (the loader workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _time_epoch(batches, warm: int) -> dict:
    """Wall time to the first batch (start-up), then images/s and CPU seconds per image
    after the first ``warm`` batches (every worker has delivered; Grain's workers start
    one after the other, PyTorch's forked ones at once): the steady state."""
    t0 = time.perf_counter()
    first = start = cpu0 = None
    n = 0
    for k, batch in enumerate(batches):
        images = batch["image"] if isinstance(batch, dict) else batch[0]
        if first is None:
            first = time.perf_counter()
        if k == warm:
            start, cpu0 = time.perf_counter(), _cpu_s()
        elif k > warm:
            n += images.shape[0]
            end, cpu1 = time.perf_counter(), _cpu_s()  # the last batch, not the shutdown
    return {
        "startup_s": first - t0,
        "images": n,
        "steady_s": end - start,
        "images_per_s": n / (end - start),
        "epoch_s": end - t0,
        "shutdown_s": time.perf_counter() - end,
        "cpu_ms_per_image": (cpu1 - cpu0) / n * 1e3,
    }


def throughput(tmp: str, n: int, workers: int, batch_size: int = 64) -> dict:
    from cnn_jax.train import load_dataset

    folder = make_folder(os.path.join(tmp, "jpegs"), n, 256, val=10)
    train, _ = load_dataset("imagenet", folder)
    rounds = {"cnn_jax": [], "torch": []}
    warm = 2 * max(workers, 1)
    for _ in range(2):  # alternated, so that a change in the machine's load hits both
        rounds["cnn_jax"].append(_time_epoch(train.batches(batch_size, workers=workers), warm))
        rounds["torch"].append(_time_epoch(_torch_loader(train, batch_size, workers, 0), warm))
    best = {k: max(v, key=lambda r: r["images_per_s"]) for k, v in rounds.items()}
    return {
        "images": n,
        "size": 256,
        "crop": 224,
        "batch_size": batch_size,
        "workers": workers,
        "rounds": rounds,
        "best": best,
        "ratio": best["cnn_jax"]["images_per_s"] / best["torch"]["images_per_s"],
    }


# ---------------------------------------------------------------- 2. step time


def step_time(
    tmp: str, n: int, batch_size: int, image_size: int, workers: int | None, rounds: int = 2
) -> dict:
    """ResNet-18 ``fit`` on a streamed folder and on the same images in memory, alternated
    (A B B A ...; the compiled programs come from a persistent cache after the first).
    Besides the wall step time (which other jobs on a shared machine move by tens of
    per cent), the time the steps waited for input and the CPU the workers used, as a
    share of the training process's: what streaming can cost a step when nothing else
    runs."""
    from cnn_jax.train import (
        TrainConfig,
        create_model,
        enable_compilation_cache,
        fit,
        load_dataset,
        load_image_folder,
    )

    os.environ["CNN_JAX_COMPILATION_CACHE"] = os.path.join(tmp, "jax-cache")
    enable_compilation_cache()
    folder = make_folder(os.path.join(tmp, "steps"), n, 128, val=batch_size, seed=1)
    streamed = [s.resized(image_size) for s in load_dataset("folder", folder)]
    t0 = time.perf_counter()
    in_memory = load_image_folder(folder, image_size=(image_size, image_size))
    load_s = time.perf_counter() - t0
    # Two epochs, the second timed: the workers' start (each imports Grain and jax, about
    # 3 CPU seconds) competes with the first epoch's steps on a 2-core machine.
    config = TrainConfig(
        dataset="folder",
        model="resnet18",
        epochs=2,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        quiet=True,
        workers=workers,
    )
    runs = {"in_memory": [], "streamed": []}
    order = ["in_memory", "streamed", "streamed", "in_memory"] * rounds
    for name in order[: 2 * rounds]:
        train, test = in_memory if name == "in_memory" else streamed
        model = create_model("resnet18", train.num_classes, train.image_shape)
        before = os.times()
        history = fit(model, train, test, config)
        after = os.times()
        s = history.summary
        main_cpu = (after.user + after.system) - (before.user + before.system)
        workers_cpu = (after.children_user + after.children_system) - (
            before.children_user + before.children_system
        )
        runs[name].append(
            {
                "step_s": batch_size / history.epochs[-1]["images_per_s"],
                "first_epoch_step_s": batch_size / history.epochs[0]["images_per_s"],
                "time_to_first_step_s": s["time_to_first_step_s"],
                "input_wait_s": s.get("input_wait_s"),
                "input_workers": s.get("input_workers"),
                "training_cpu_s": main_cpu,
                "workers_cpu_s": workers_cpu,
            }
        )
    out = {}
    for name, r in runs.items():
        out[name] = {
            "runs": r,
            "step_s": float(np.mean([x["step_s"] for x in r])),
            "step_s_spread": [min(x["step_s"] for x in r), max(x["step_s"] for x in r)],
        }
    # What decoding a batch costs, against the CPU a step has (its wall time x cores):
    # the slowdown streaming can cause a step on an otherwise idle machine. (The
    # workers' total CPU above also holds their start-up: importing Grain and jax.)
    c0 = time.process_time()
    for j in range(64):
        streamed[0].load(j)
    decode_s = (time.process_time() - c0) / 64 * batch_size
    steps = 2 * (n // batch_size)
    return {
        "images": n,
        "source_size": 128,
        "image_size": image_size,
        "batch_size": batch_size,
        "steps_per_run": steps,
        "load_in_memory_s": load_s,
        **out,
        "ratio": out["streamed"]["step_s"] / out["in_memory"]["step_s"],
        "input_wait_per_step_s": max(x["input_wait_s"] for x in runs["streamed"]) / steps,
        "decode_cpu_per_step_s": decode_s,
        "decode_share": decode_s / (out["in_memory"]["step_s"] * (os.cpu_count() or 1)),
    }


# ---------------------------------------------------------------- 3. memory


# The peak RSS of the process itself: VmHWM (ru_maxrss is inherited across fork and exec,
# so a child of a large benchmark process would report its parent's peak).
_HWM = (
    "def hwm_kb():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1])\n"
)
_RSS = (
    _HWM + "import sys\n"
    "from cnn_jax.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('maxrss_kb', hwm_kb())\n"
    "sys.exit(code)\n"
)
_RSS_MEMORY = (
    _HWM + "import sys\n"
    "from cnn_jax.train import load_image_folder\n"
    "train, test = load_image_folder(sys.argv[1])\n"
    "print('maxrss_kb', hwm_kb())\n"
)


def _peak_rss_mb(code: str, args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=ROOT, CNN_JAX_COMPILATION_CACHE="off")
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=1200
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    kb = int(proc.stdout.split("maxrss_kb")[-1].split()[0])
    return kb / 1024


def memory(tmp: str, sizes: tuple[int, ...], workers: int | None, steps: int = 90) -> dict:
    """Peak RSS of a streamed run on each folder size, every run ``steps`` steps long
    (epochs = steps / steps per epoch: the process's own peak also creeps up with the
    step count, allocator and XLA warm-up, which is not what is measured here), the
    larger of two runs; and of loading the same folder into memory."""
    rows = {}
    for n in sizes:
        folder = make_folder(os.path.join(tmp, f"rss{n}"), n, 64, val=max(n // 10, 10), seed=2)
        epochs = max(1, round(steps / (n // 64)))
        args = [
            "train",
            "--dataset",
            "folder",
            "--data-dir",
            folder,
            "--model",
            "digits_cnn",
            "--width",
            "8",
            "--image-size",
            "32",
            "--epochs",
            str(epochs),
            "--batch-size",
            "64",
            "--eval-batch-size",
            "64",
            "--quiet",
        ]
        if workers is not None:
            args += ["--workers", str(workers)]
        runs = [
            _peak_rss_mb(_RSS, args + ["--out", os.path.join(tmp, f"run{n}-{k}")]) for k in range(2)
        ]
        rows[n] = {
            "epochs": epochs,
            "steps": epochs * (n // 64),
            "streamed_mb": max(runs),
            "streamed_runs_mb": runs,
            "in_memory_load_mb": _peak_rss_mb(_RSS_MEMORY, [folder]),
        }
    small, large = rows[min(sizes)], rows[max(sizes)]
    return {
        "sizes": list(sizes),
        "rows": rows,
        "streamed_growth_mb": large["streamed_mb"] - small["streamed_mb"],
        "in_memory_growth_mb": large["in_memory_load_mb"] - small["in_memory_load_mb"],
    }


# ---------------------------------------------------------------- report


def machine() -> dict:
    import grain  # noqa: F401 - its version below
    import jax
    import PIL

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    from importlib.metadata import version

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "grain": version("grain"),
        "pillow": PIL.__version__,
        "torch": torch_version,
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small folders: a smoke run")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="input workers of both loaders in the throughput test (2)",
    )
    parser.add_argument("--only", choices=("throughput", "steps", "memory"), default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    result = {"machine": machine()}
    print(json.dumps(result["machine"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "throughput"):
            r = result["throughput"] = throughput(tmp, 400 if quick else 4000, args.workers)
            b = r["best"]
            print(
                f"throughput ({r['images']} JPEGs 256px -> 224 crop, {r['workers']} "
                f"workers): cnn_jax {b['cnn_jax']['images_per_s']:.0f} img/s "
                f"(start {b['cnn_jax']['startup_s']:.1f} s), torch "
                f"{b['torch']['images_per_s']:.0f} img/s (start "
                f"{b['torch']['startup_s']:.1f} s): {r['ratio']:.2f}x",
                flush=True,
            )
        if args.only in (None, "steps"):
            r = result["steps"] = step_time(tmp, 128 if quick else 512, 32, 32, None)
            w = r["streamed"]["runs"][0]["input_workers"]
            print(
                f"resnet18 step ({r['image_size']} px, batch {r['batch_size']}): in memory "
                f"{r['in_memory']['step_s']:.3f} s {r['in_memory']['step_s_spread']}, "
                f"streamed {r['streamed']['step_s']:.3f} s {r['streamed']['step_s_spread']} "
                f"({w} workers): {r['ratio']:.3f}x; input wait "
                f"{r['input_wait_per_step_s'] * 1e3:.1f} ms/step; decoding a batch "
                f"{r['decode_cpu_per_step_s'] * 1e3:.0f} ms CPU = "
                f"{100 * r['decode_share']:.1f}% of a step's CPU",
                flush=True,
            )
        if args.only in (None, "memory"):
            r = result["memory"] = memory(tmp, (128, 600) if quick else (600, 6000), None)
            for n, row in r["rows"].items():
                print(
                    f"peak RSS, {n} images ({row['steps']} steps): streamed run "
                    f"{row['streamed_mb']:.0f} MB, in-memory load "
                    f"{row['in_memory_load_mb']:.0f} MB",
                    flush=True,
                )
            print(
                f"growth: streamed {r['streamed_growth_mb']:+.0f} MB, in memory "
                f"{r['in_memory_growth_mb']:+.0f} MB",
                flush=True,
            )
    folder = os.path.join(HERE, "results", "quick" if quick else "")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "stream.json" if args.only is None else f"stream-{args.only}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
