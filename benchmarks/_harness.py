"""Timing and statistics shared by every suite.

One method for every implementation, JAX or PyTorch (benchmarks/README.md,
"Methodology"):

* the first call is timed apart and reported as ``compile_s`` (JAX: trace, compile
  and one run; ``torch.compile``: the same; eager PyTorch: one run);
* a second call (skipped for very slow ones) estimates the time of one call; a
  sample is then ``number``
  back-to-back calls (enough to last ``min_sample_s``), waited for at the end
  (``jax.block_until_ready``; ``torch.cuda.synchronize`` on a GPU), divided by
  ``number``;
* the implementations of one case are sampled **interleaved** (each round in a new
  random order, after 10 ms idle), so that load from other processes on a shared
  machine falls on all of them alike, and no implementation always follows the one
  whose threads are still spinning;
* the median of the samples is the result, with the quartiles and the extremes as
  its spread. A ratio whose quartile interval contains 1 is reported as parity.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# Idle time before each sample. XLA's thread pool and PyTorch's OpenMP threads spin for
# a while after their work before they sleep; on a 2-core machine a sample that starts
# right after another framework's shares the cores with those spinning threads
# (measured: cnn_jax's convolutions, always sampled after PyTorch's in a fixed
# rotation, read 1.1-1.5x slower than the identical raw-lax program).
COOLDOWN_S = 0.01


@dataclasses.dataclass
class Impl:
    """One implementation of a case: ``run()`` launches it, ``wait(result)`` blocks
    until it is done; ``before()`` (optional) runs outside the timed region before each
    sample (e.g. setting PyTorch's thread count)."""

    name: str
    run: Callable[[], Any]
    wait: Callable[[Any], None]
    before: Callable[[], None] | None = None
    info: dict = dataclasses.field(default_factory=dict)


def jax_wait(result):
    import jax

    jax.block_until_ready(result)


def summarize(samples_s: list[float]) -> dict:
    """Median, quartiles and extremes in ms of per-call times given in seconds."""
    ms = sorted(1e3 * s for s in samples_s)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {
        "median_ms": statistics.median(ms),
        "q1_ms": q1,
        "q3_ms": q3,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "n": len(ms),
    }


def measure(
    impls: list[Impl], *, repeats: int, min_sample_s: float, max_case_s: float
) -> dict[str, dict]:
    """Time ``impls`` interleaved; returns ``{name: summarize(...) + compile_s, number}``.

    ``repeats`` samples per implementation, fewer (never under 3) when one round of
    all of them would make the case last longer than ``max_case_s``. An
    implementation that raises is reported as ``{"error": message}``.
    """
    first, number, alive = {}, {}, []
    for impl in impls:
        try:
            if impl.before:
                impl.before()
            t0 = time.perf_counter()
            impl.wait(impl.run())
            first[impl.name] = time.perf_counter() - t0
            if first[impl.name] > max_case_s:  # slow: the first call is estimate enough
                one = first[impl.name]
            else:
                t0 = time.perf_counter()
                impl.wait(impl.run())
                one = max(time.perf_counter() - t0, 1e-7)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run this case
            first[impl.name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        number[impl.name] = max(1, min(1000, math.ceil(min_sample_s / one)))
        alive.append((impl, one))
    round_s = sum(one * number[i.name] for i, one in alive)
    n = max(3, min(repeats, int(max_case_s / max(round_s, 1e-9))))
    samples = {impl.name: [] for impl, _ in alive}
    shuffle = random.Random(0).shuffle
    for _ in range(n):
        order = list(alive)
        shuffle(order)
        for impl, _ in order:
            if impl.before:
                impl.before()
            time.sleep(COOLDOWN_S)
            k = number[impl.name]
            t0 = time.perf_counter()
            results = [impl.run() for _ in range(k)]
            impl.wait(results)
            samples[impl.name].append((time.perf_counter() - t0) / k)
            del results
    out = {}
    for impl in impls:
        if isinstance(first[impl.name], dict):
            out[impl.name] = first[impl.name]
            continue
        out[impl.name] = dict(
            summarize(samples[impl.name]),
            compile_s=first[impl.name],
            number=number[impl.name],
            **impl.info,
        )
    return out


def fold_variants(timings: dict[str, dict]) -> dict[str, dict]:
    """``{"torch@1": t1, "torch@2": t2}`` -> ``{"torch": the faster, with "threads"}``.

    PyTorch on CPU runs at 1 thread and at every core, and keeps the faster: on a
    shared machine its OpenMP barriers can wait a scheduler tick for a descheduled
    thread, which costs a small op 10-100x (measured; benchmarks/README.md).
    """
    out, groups = {}, {}
    for name, t in timings.items():
        base, _, threads = name.partition("@")
        if threads:
            groups.setdefault(base, []).append((int(threads), t))
        else:
            out[name] = t
    for base, variants in groups.items():
        ok = [(th, t) for th, t in variants if "median_ms" in t]
        if not ok:
            out[base] = variants[0][1]
            continue
        th, best = min(ok, key=lambda v: v[1]["median_ms"])
        out[base] = dict(
            best, threads=th, other_threads={str(o): t.get("median_ms") for o, t in ok if o != th}
        )
    return out


def ratio(a: dict | None, b: dict | None, *, noise: float = 0.0) -> dict | None:
    """``a / b`` of two timings with its quartile interval and a verdict.

    ``lo = a.q1 / b.q3`` and ``hi = a.q3 / b.q1``; when ``lo <= 1 <= hi`` (widened by
    ``noise``, a relative floor) the two are at **parity**; otherwise ``a`` is
    ``faster`` (ratio < 1) or ``slower``.
    """
    if not a or not b or "median_ms" not in a or "median_ms" not in b:
        return None
    r = a["median_ms"] / b["median_ms"]
    lo = a["q1_ms"] / b["q3_ms"] * (1 - noise)
    hi = a["q3_ms"] / b["q1_ms"] * (1 + noise)
    if min(a.get("n", 0), b.get("n", 0)) < 2:
        verdict = "single run"  # no spread to judge noise by
    else:
        verdict = "parity" if lo <= 1.0 <= hi else ("faster" if r < 1 else "slower")
    return {"ratio": r, "lo": lo, "hi": hi, "verdict": verdict}


def environment() -> dict:
    """Device, versions and machine facts for the results header (imports jax)."""
    import jax

    env = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", None),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    }
    for name in ("flax", "optax", "equinox", "torchvision"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as absent
            env[name] = None
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["torch_device"] = torch.cuda.get_device_name(0)
            env["cudnn"] = torch.backends.cudnn.version()
            env["torch_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
            env["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    except ImportError:
        env["torch"] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def device_slug(env: dict) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"``; the CPU is named by its platform."""
    text = env["device"] if env["platform"] != "cpu" else "cpu"
    slug = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in slug.split("-") if p)
