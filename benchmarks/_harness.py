"""Timing harness shared by the benchmark scripts.

JAX cases are jitted, run once untimed (compile + warm-up), then timed with
``block_until_ready`` inside the loop; the median of the repeats is reported.
PyTorch cases get the same warm-up and median.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(__file__).parent / "results"


def time_jax(fn, *args, repeats: int = 10) -> float:
    """Median wall time in ms of ``fn(*args)`` (already jitted), after one warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def time_torch(fn, repeats: int = 10) -> float:
    """Median wall time in ms of ``fn()`` (a PyTorch closure), after one warm-up."""
    import torch

    fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def environment() -> dict:
    """Device, versions and machine facts for the results header."""
    env = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    try:
        import flax

        env["flax"] = flax.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        env["torch"] = None
    return env


def print_header(title: str, env: dict) -> None:
    print(f"# {title}")
    print("# " + ", ".join(f"{k}={v}" for k, v in env.items()))


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as an aligned table; floats with 2 decimals."""

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def results_path(name: str, *, quick: bool = False) -> Path:
    """``results/NAME.json``; smoke runs (``--quick``) go to ``results/quick/`` (not
    tracked), so they never overwrite the recorded results the README cites."""
    folder = RESULTS / "quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.json"


def write_json(name: str, env: dict, rows: list[dict], *, quick: bool = False) -> Path:
    path = results_path(name, quick=quick)
    path.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    return path


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b
