"""``python -m benchmarks``: run the suites, write the results, print the table.

    python -m benchmarks                      # every suite; results/<device>-<date>.json + .md
    python -m benchmarks --quick              # about a minute on a CPU: tiny shapes, few samples
    python -m benchmarks --suite ops          # one suite (repeatable): ops pool transpose models train
    python -m benchmarks --compare A.json B.json   # B/A ratio table of two results files
    python -m benchmarks --plan gpu --quick   # the GPU plan's code path, on whatever is here

``cnn-jax bench ARGS`` is the same command. The plan (sizes, dtypes, peers) follows
the JAX backend, ``gpu`` or ``cpu``, unless ``--plan`` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import time
from pathlib import Path

SUITES = ("ops", "pool", "transpose", "models", "train")
# With --budget-s, the part of the remaining time each suite may start cases in.
BUDGET_SHARES = {"models": 40, "ops": 35, "transpose": 15, "pool": 10, "train": 10}
RESULTS = Path(__file__).parent / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="cnn_jax against raw lax, flax.nnx, Equinox and PyTorch: every suite, "
        "one results file (JSON and markdown), the table printed last.",
        epilog="Ratios are cnn_jax's median time over the other's: below 1 cnn_jax is faster; "
        "'~' marks parity (within the measured spread). Methodology: "
        "benchmarks/README.md.",
    )
    p.add_argument(
        "--suite",
        action="append",
        choices=SUITES,
        metavar="SUITE",
        help=f"run only this suite, repeatable, in the order given ({', '.join(SUITES)};"
        f" default: all)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and 3 samples: every code path in about a minute on a CPU; "
        "written under results/quick/ (not tracked)",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="print B/A for every timing the two results files share, then exit",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for the results (default: benchmarks/results, or "
        "benchmarks/results/quick with --quick)",
    )
    p.add_argument(
        "--plan",
        choices=("cpu", "gpu"),
        default=None,
        help="sizes, dtypes and peers of this device kind (default: the JAX "
        "backend's); '--plan gpu --quick' on a CPU is the GPU script's dry run",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help="samples per implementation (default: 7 CPU, 10 GPU, 3 --quick)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        metavar="S",
        help="stop starting new cases after S seconds (their rows say so); "
        "the results are still written",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="GPU: TF32 matmuls/convolutions in both frameworks (default: true float32 in both)",
    )
    p.add_argument("--no-equinox", action="store_true", help="leave Equinox out")
    p.add_argument(
        "--torch-compile",
        choices=("none", "models", "all"),
        default=None,
        help="where torch.compile is timed beside eager PyTorch (default: models on "
        "a GPU, none on a CPU; 'all' adds every op case: tens of seconds of "
        "compilation each)",
    )
    p.add_argument(
        "--markdown",
        metavar="RESULTS.json",
        help="print the tables of a results file again (no run), then exit",
    )
    p.add_argument(
        "--seeds",
        default="0,1",
        help="train suite: seeds of the cnn-jax train rounds ('' to skip them)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        from benchmarks._report import compare

        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        print(compare(a, b, Path(args.compare[0]).name, Path(args.compare[1]).name))
        return 0
    if args.markdown:
        from benchmarks._report import markdown

        print(markdown(json.loads(Path(args.markdown).read_text())), end="")
        return 0
    return run(args)


def run(args) -> int:
    t_start = time.monotonic()
    _interrupt_on_signals()
    import jax

    from benchmarks import _peers, _report
    from benchmarks._harness import device_slug, environment
    from benchmarks._suite import add_peak_fractions

    backend = jax.default_backend()
    plan = args.plan or ("gpu" if backend == "gpu" else "cpu")
    ctx = _peers.make_context(
        plan=plan,
        quick=args.quick,
        repeats=args.repeats,
        budget_s=args.budget_s,
        use_equinox=not args.no_equinox,
        torch_compile=args.torch_compile,
        log=lambda line: print(line, flush=True),
    )
    precision = "backend default (float32 on a CPU)"
    if plan == "gpu":
        _peers.set_precision(ctx, args.tf32)
        precision = "TF32 in both frameworks" if args.tf32 else "float32 in both frameworks"
    from benchmarks import train as train_suite

    train_suite.OPTIONS["seeds"] = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    env = environment()
    date = datetime.date.today().isoformat()
    results = {
        "environment": env,
        "settings": {
            "date": date,
            "plan": plan,
            "quick": args.quick,
            "repeats": ctx.repeats,
            "min_sample_s": ctx.min_sample_s,
            "max_case_s": ctx.max_case_s,
            "dtypes": list(ctx.dtypes),
            "torch_threads_tried": list(ctx.torch_threads),
            "torch_compile": ctx.torch_compile,
            "precision": precision,
            "argv": sys.argv[1:],
            "wall_s": 0.0,
        },
        "peaks": {},
        "suites": {},
        "records": ctx.records,
    }
    print(
        f"# cnn_jax benchmarks: plan {plan}{' --quick' if args.quick else ''} on "
        f"{env['device']} ({env['platform']}); jax {env['jax']}, flax {env['flax']}, "
        f"torch {env['torch']}, equinox {env['equinox']}",
        flush=True,
    )
    peaks_start = measure_peaks(ctx)
    out_dir = Path(args.out) if args.out else (RESULTS / "quick" if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{device_slug(env)}-{date}" + (
        f"-plan-{plan}" if plan != ("gpu" if backend == "gpu" else "cpu") else ""
    )
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    names = list(dict.fromkeys(args.suite or SUITES))
    end = ctx.deadline
    for i, name in enumerate(names):
        if args.budget_s:  # each suite its share of what is left; unused time rolls over
            share = BUDGET_SHARES[name] / sum(BUDGET_SHARES[n] for n in names[i:])
            ctx.deadline = time.monotonic() + max(0.0, end - time.monotonic()) * share
        print(f"\n## suite {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        t0, c0 = time.monotonic(), _cpu_s()
        ctx.partial = []
        try:
            results["suites"][name] = module.run(ctx)
        except KeyboardInterrupt:  # Ctrl-C, or gpu.sh's timeout: keep what was measured
            results["suites"][name] = ctx.partial
            results["settings"]["interrupted"] = f"stopped by SIGINT during suite {name}"
            print(f"## suite {name}: interrupted; writing what was measured", flush=True)
            break
        except Exception as e:  # noqa: BLE001 - a bug in one suite: the others still run
            import traceback

            traceback.print_exc()
            results["suites"][name] = ctx.partial
            results["settings"].setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
        finally:
            results["settings"].setdefault("suite_s", {})[name] = {
                "wall": time.monotonic() - t0,
                "cpu": _cpu_s() - c0,
            }
        print(
            f"## suite {name}: {time.monotonic() - t0:.0f} s ({_cpu_s() - c0:.0f} CPU s)",
            flush=True,
        )
        results["settings"]["wall_s"] = time.monotonic() - t_start
        _write(json_path, results)  # after every suite: a later failure keeps these
    print("\n## matmul peak again", flush=True)
    try:
        peaks_end = measure_peaks(ctx)
    except KeyboardInterrupt:
        peaks_end = {}
    results["peaks"] = {}
    for dtype, p in peaks_start.items():
        end = peaks_end.get(dtype, {"flops": 0.0, "by": {}})
        results["peaks"][dtype] = dict(
            p,
            flops=max(p["flops"], end["flops"]),
            start=p["flops"],
            end=end["flops"] or None,
            by={k: max(v, end["by"].get(k, 0.0)) for k, v in p["by"].items()},
        )
    add_peak_fractions(results)
    results["settings"]["wall_s"] = time.monotonic() - t_start
    results["settings"]["cpu_s"] = _cpu_s()
    results["environment"]["load_average_at_end"] = os.getloadavg()
    _write(json_path, results)
    text = _report.markdown(results)
    md_path.write_text(text)
    print(f"\nwrote {json_path} and {md_path.name}\n")
    print(text, flush=True)
    return 0


def _interrupt_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, which ends the run early but still
    writes and prints what was measured (gpu.sh stops an overlong run so). Set
    explicitly: a shell may start a background job with SIGINT ignored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _cpu_s() -> float:
    """CPU seconds used by this process so far (all threads): with the wall time it
    shows how much of the machine the run had."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _write(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def measure_peaks(ctx) -> dict:
    """The device's matmul peak, measured now: the best sample of JAX's and PyTorch's
    FLOP/s on a large square matmul, per dtype of the plan (the best, not the median:
    a peak is what the device can do, and load from other processes only lowers it)."""
    import jax
    import jax.numpy as jnp

    from benchmarks._harness import Impl, jax_wait, measure
    from benchmarks._peers import normal, torch_tensor

    n = 1024 if ctx.quick else (8192 if ctx.plan == "gpu" else 2048)
    peaks = {}
    for dtype in ctx.dtypes:
        a = normal((n, n), dtype)
        f = jax.jit(jnp.matmul)
        impls = [Impl("jax", lambda: f(a, a), jax_wait)]
        if ctx.torch is not None:
            ta = torch_tensor(ctx, a)
            wait = (
                (lambda _: ctx.torch.cuda.synchronize())
                if ctx.torch_device == "cuda"
                else (lambda _: None)
            )
            impls.append(Impl("torch", lambda: ctx.torch.matmul(ta, ta), wait))
        t = measure(
            impls, repeats=ctx.repeats, min_sample_s=ctx.min_sample_s, max_case_s=ctx.max_case_s
        )
        by = {k: 2 * n**3 / (v["min_ms"] / 1e3) for k, v in t.items() if "min_ms" in v}
        peaks[dtype] = {"flops": max(by.values()), "by": by, "shape": f"{n}x{n} @ {n}x{n}"}
        ctx.log(
            f"  {dtype} matmul peak {peaks[dtype]['flops'] / 1e12:.3f} TFLOP/s "
            f"(" + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in by.items()) + ")"
        )
    return peaks


def legacy_script(suite: str, argv: list[str]) -> int:
    """``python benchmarks/ops.py|train.py ARGS`` of earlier versions: the same suite
    through this command (``--section S`` is ``--suite S``; other flags as given)."""
    out, it = ["--suite", suite] if suite != "ops" else [], iter(argv)
    sections = []
    for arg in it:
        if arg == "--section":
            sections.append(next(it))
        elif arg.startswith("--section="):
            sections.append(arg.split("=", 1)[1])
        elif arg == "--skip-digits":
            out += ["--seeds", ""]
        else:
            out.append(arg)
    if suite == "ops":
        names = {"conv": "ops", "pool": "pool", "transpose": "transpose"}
        for s in sections or ["conv", "transpose", "pool"]:
            out += ["--suite", names[s]]
    return main(out)
