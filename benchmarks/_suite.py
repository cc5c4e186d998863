"""One case, timed: rows of the results file and the line printed while it runs.

A row is one case x pass x dtype::

    {"suite", "case", "what", "pass", "dtype", "flops", "items",
     "impls": {name: {median_ms, q1_ms, q3_ms, min_ms, max_ms, n, compile_s, ...}},
     "ratios": {"cnn_jax/torch": {ratio, lo, hi, verdict}, ...}}

``flops`` is per call (None where FLOP/s means nothing, e.g. pooling); ``items``
is the images per call where images/s is the natural unit (whole models).
"""

from __future__ import annotations

import functools
import math

from benchmarks._harness import fold_variants, measure, ratio
from benchmarks._peers import (
    equinox_layer_fn,
    jax_pass_impls,
    nchw_to_nhwc,
    nhwc_to_nchw,
    rel_err,
    set_torch_threads,
    torch_output,
    torch_pass_impls,
)

# Whose time is compared with whose: "A/B" for A in SUBJECTS, B any other impl.
SUBJECTS = ("cnn_jax", "prototype")


def add_ratios(row: dict) -> dict:
    impls = row["impls"]
    ratios = {}
    for a in SUBJECTS:
        if a not in impls or "median_ms" not in impls[a]:
            continue
        for b, tb in impls.items():
            if b == a or (b in SUBJECTS and SUBJECTS.index(b) < SUBJECTS.index(a)):
                continue
            r = ratio(impls[a], tb)
            if r is not None:
                ratios[f"{a}/{b}"] = r
    row["ratios"] = ratios
    return row


def add_rates(row: dict) -> dict:
    """Achieved FLOP/s and images/s per implementation (the fraction of the peak is
    added at the end of the run, by :func:`add_peak_fractions`)."""
    for t in row["impls"].values():
        if "median_ms" not in t:
            continue
        seconds = t["median_ms"] / 1e3
        if row.get("flops"):
            t["tflops"] = row["flops"] / seconds / 1e12
        if row.get("items"):
            t["items_per_s"] = row["items"] / seconds
    return row


def add_peak_fractions(results: dict) -> None:
    """Every implementation's achieved FLOP/s as a fraction of the matmul peak of its
    row's dtype (measured at the start and at the end of the run: the higher)."""
    peaks = {dtype: p["flops"] for dtype, p in results.get("peaks", {}).items()}
    for rows in results["suites"].values():
        for row in rows:
            peak = peaks.get(row.get("dtype"))
            for t in row.get("impls", {}).values():
                if peak and "tflops" in t:
                    t["peak_fraction"] = t["tflops"] * 1e12 / peak


def time_case(
    ctx,
    base: dict,
    impls_by_pass: dict,
    *,
    flops: dict | None = None,
    items: int | None = None,
    errors=None,
) -> list[dict]:
    """Time every pass of one case and return its rows (also printed as they finish).

    ``impls_by_pass``: ``{pass: [Impl, ...]}``; ``flops``: ``{pass: FLOPs per call}``;
    ``errors``: a function returning ``{impl: relative error of its forward output vs
    cnn_jax}`` (a trust check: every peer computes the same thing), called after the
    first pass is timed (so that its compilations are not) and added to its row.
    """
    rows = []
    for p, impls in impls_by_pass.items():
        row = dict(base, **{"pass": p})
        if ctx.time_left() <= 0:
            row.update(impls={}, ratios={}, skipped="time budget of the run spent")
            ctx.log(f"  {base['case']:<44} {p:<8} skipped: time budget spent")
            rows.append(row)
            ctx.partial.append(row)
            continue
        timings = fold_variants(
            measure(
                impls, repeats=ctx.repeats, min_sample_s=ctx.min_sample_s, max_case_s=ctx.max_case_s
            )
        )
        set_torch_threads(ctx)
        row["flops"] = (flops or {}).get(p)
        row["items"] = items
        row["impls"] = timings
        if errors and p == next(iter(impls_by_pass)):
            for name, e in errors().items():
                if name in timings:
                    timings[name]["rel_err_vs_cnn_jax"] = e
        add_rates(row)
        add_ratios(row)
        rows.append(row)
        ctx.partial.append(row)
        ctx.log(progress_line(row))
    return rows


def run_guarded(ctx, suite: str, name: str, fn) -> list[dict]:
    """``fn()``'s rows, or one row naming the exception: one case that cannot run (out
    of memory, a peer without the op) must not cost the run the cases after it."""
    try:
        return fn()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - recorded in the results, the run goes on
        import traceback

        traceback.print_exc()
        message = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        ctx.log(f"  {name:<44} failed: {message}")
        row = {
            "suite": suite,
            "case": name,
            "what": "",
            "pass": "-",
            "dtype": "-",
            "impls": {},
            "ratios": {},
            "skipped": f"failed: {message}",
        }
        ctx.partial.append(row)
        return [row]


def run_cases(ctx, suite: str, cases, run_case) -> list[dict]:
    """The rows of ``run_case(ctx, case, dtype)`` for every case in every dtype of the
    run, each one guarded by :func:`run_guarded`."""
    rows = []
    for case in cases:
        for dtype in ctx.dtypes:
            rows += run_guarded(
                ctx,
                suite,
                case.name(dtype),
                lambda case=case, dtype=dtype: run_case(ctx, case, dtype),
            )
    return rows


class Peers:
    """The implementations of one case, by pass, and the forward output of each (for
    the trust check of :func:`time_case`: every peer against cnn_jax's)."""

    def __init__(self, passes):
        self.passes = passes
        self.impls = {p: [] for p in passes}
        self.outputs = {}

    def add(self, name, f, args, *, info=None, output=None):
        """A JAX implementation ``f(*args)``; ``output`` maps its forward result to
        cnn_jax's layout (e.g. channels-first back to channels-last)."""
        made = jax_pass_impls(name, f, args, passes=self.passes, info=info)
        for p, impl in made.items():
            self.impls[p].append(impl)
        run = made["fwd"].run
        self.outputs[name] = run if output is None else (lambda: output(run()))

    def add_equinox(self, layer, x):
        """An Equinox layer (unbatched, channels-first; vmapped over N) on cnn_jax's
        channels-last ``x``, its output put back into channels-last."""
        import jax.numpy as jnp

        f, params = equinox_layer_fn(layer)
        x_cf = jnp.transpose(x, nhwc_to_nchw(x.ndim))
        self.add(
            "equinox",
            f,
            (params, x_cf),
            output=functools.partial(jnp.transpose, axes=nchw_to_nhwc(x.ndim)),
        )

    def add_torch(self, ctx, fn, tensors):
        """PyTorch's ``fn(*tensors)`` (eager, and compiled where the run compiles)."""
        for p, lst in torch_pass_impls(ctx, fn, tensors, passes=self.passes).items():
            self.impls[p] += lst
        self.outputs["torch"] = lambda: torch_output(ctx, fn, tensors)

    def errors(self) -> dict:
        ref = self.outputs["cnn_jax"]()
        return {
            name: rel_err(ref, out()) for name, out in self.outputs.items() if name != "cnn_jax"
        }

    def time(self, ctx, base: dict, *, forward_flops: int | None = None) -> list[dict]:
        """:func:`time_case` of these implementations; ``forward_flops``: FLOPs of the
        forward pass (forward + backward counts three times as many)."""
        flops = (
            None if forward_flops is None else {"fwd": forward_flops, "fwd+bwd": 3 * forward_flops}
        )
        return time_case(ctx, base, self.impls, flops=flops, errors=self.errors)


def progress_line(row: dict) -> str:
    cells = []
    for name, t in row["impls"].items():
        cells.append(f"{name} {t['median_ms']:.3g}" if "median_ms" in t else f"{name} ERR")
    keys = [k for k in row["ratios"] if k.startswith("cnn_jax/")]
    ratios = " ".join(f"{k[8:]} {row['ratios'][k]['ratio']:.2f}" for k in keys)
    return (
        f"  {row['case']:<44} {row['pass']:<8} {row['dtype']:<8} ms: {', '.join(cells)}"
        f" | cnn_jax/: {ratios}"
    )


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0
