"""Benchmark of cnn_jax's ops against raw lax, flax.nnx and PyTorch, in one run.

    python benchmarks/ops.py                 # every section
    python benchmarks/ops.py --section pool  # conv | transpose | pool
    python benchmarks/ops.py --quick         # small shapes, a smoke run

Each case is timed forward (``fwd``) and forward+backward (``fwd+bwd``: the
gradient of ``sum(op(x, w))`` with respect to every input). Ratios are cnn_jax's
median time over the other implementation's: < 1 means cnn_jax is faster.
Results go to ``benchmarks/results/ops.json`` (``--quick``: ``results/quick/ops.json``).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import cnn_jax as cj
from _harness import environment, print_header, print_table, ratio, time_jax, time_torch, write_json

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # PyTorch is optional for the benchmark
    torch = None


def _time_fwd_bwd(f, *args, repeats):
    """Median ms of the forward pass plus the VJP of every argument of ``f``.

    The cotangent is random (not ones), so XLA cannot simplify the backward pass.
    """
    out = jax.eval_shape(f, *args)
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), out.dtype)

    @jax.jit
    def fwd_bwd(args, ct):
        y, pull = jax.vjp(f, *args)
        return y, pull(ct)

    return time_jax(fwd_bwd, args, ct, repeats=repeats)


def _torch_case(fn_fwd, tensors, repeats):
    """Forward and forward+backward times of a PyTorch closure over ``tensors``."""
    if torch is None:
        return None, None

    def fwd():
        with torch.no_grad():
            fn_fwd(*tensors)

    with torch.no_grad():
        ct = torch.randn_like(fn_fwd(*tensors))

    def fwd_bwd():
        for t in tensors:
            t.grad = None
        fn_fwd(*tensors).backward(ct)

    return time_torch(fwd, repeats), time_torch(fwd_bwd, repeats)


def _to_torch_cl(x_nhwc, requires_grad=True):
    t = torch.from_numpy(np.array(x_nhwc)).permute(0, 3, 1, 2)
    t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def _rows(name, t, others):
    """One table row per pass from the timings ``t`` (``{impl}_{fwd|bwd}`` -> ms)."""
    rows = []
    for mode in ("fwd", "bwd"):
        row = {"case": name, "pass": "fwd" if mode == "fwd" else "fwd+bwd",
               "cnn_jax_ms": t[f"cj_{mode}"]}
        row.update({f"{o}_ms": t.get(f"{o}_{mode}") for o in others})
        row.update({f"vs_{o}": ratio(t[f"cj_{mode}"], t.get(f"{o}_{mode}")) for o in others})
        rows.append(row)
    return rows


def conv_cases(quick: bool):
    # (N, H, W, C_in, C_out, k, stride): ResNet-50-like layers.
    if quick:
        return [(2, 16, 16, 8, 8, 3, 1), (2, 16, 16, 8, 16, 1, 2)]
    return [
        (8, 112, 112, 3, 64, 7, 2),
        (8, 56, 56, 64, 64, 3, 1),
        (8, 56, 56, 64, 128, 3, 2),
        (8, 28, 28, 128, 128, 3, 1),
        (8, 14, 14, 256, 1024, 1, 1),
    ]


def bench_conv(quick: bool, repeats: int):
    from flax import nnx

    rows = []
    for n, h, w, cin, cout, k, s in conv_cases(quick):
        p = k // 2
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
        kern = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
        ours = functools.partial(cj.conv, stride=s, padding=p)
        raw = functools.partial(
            lax.conv_general_dilated,
            window_strides=(s, s),
            padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        layer = nnx.Conv(cin, cout, (k, k), strides=s, padding=((p, p), (p, p)), use_bias=False, rngs=nnx.Rngs(0))
        layer.kernel.value = kern
        graphdef, state = nnx.split(layer)
        flax_fn = lambda st, x: nnx.merge(graphdef, st)(x)  # noqa: E731

        t = {}
        t["cj_fwd"] = time_jax(jax.jit(ours), x, kern, repeats=repeats)
        t["lax_fwd"] = time_jax(jax.jit(raw), x, kern, repeats=repeats)
        t["flax_fwd"] = time_jax(jax.jit(flax_fn), state, x, repeats=repeats)
        t["cj_bwd"] = _time_fwd_bwd(ours, x, kern, repeats=repeats)
        t["lax_bwd"] = _time_fwd_bwd(raw, x, kern, repeats=repeats)
        t["flax_bwd"] = _time_fwd_bwd(flax_fn, state, x, repeats=repeats)
        if torch is not None:
            tx = _to_torch_cl(x)
            tw = torch.from_numpy(np.array(kern)).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
            tw.requires_grad_(True)
            t["torch_fwd"], t["torch_bwd"] = _torch_case(
                lambda a, b: F.conv2d(a, b, stride=s, padding=p), (tx, tw), repeats
            )
        name = f"conv2d_{n}x{h}x{w}x{cin}_k{k}s{s}_o{cout}_f32"
        rows += _rows(name, t, ("lax", "flax", "torch"))
    return rows


def transpose_cases(quick: bool):
    # (N, H, W, C_in, C_out, k, stride, padding, output_padding): decoder layers.
    if quick:
        return [(2, 8, 8, 8, 4, 2, 2, 0, 0), (2, 8, 8, 8, 4, 3, 2, 1, 1)]
    return [
        (8, 28, 28, 256, 128, 2, 2, 0, 0),  # U-Net up-conv
        (8, 16, 16, 256, 128, 4, 2, 1, 0),  # DCGAN
        (8, 28, 28, 128, 64, 3, 2, 1, 1),  # "same"-style decoder
    ]


def bench_transpose(quick: bool, repeats: int):
    rows = []
    for n, h, w, cin, cout, k, s, p, op in transpose_cases(quick):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
        kern = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
        ours = functools.partial(cj.conv_transpose, stride=s, padding=p, output_padding=op)
        # The same op through lax.conv_transpose (lhs_dilation inside): padding in
        # lax's convention for PyTorch's (k - 1 - p, k - 1 - p + output_padding).
        raw = functools.partial(
            lax.conv_transpose,
            strides=(s, s),
            padding=((k - 1 - p, k - 1 - p + op),) * 2,
            dimension_numbers=("NHWC", "HWOI", "NHWC"),
            transpose_kernel=True,
        )
        t = {}
        t["cj_fwd"] = time_jax(jax.jit(ours), x, kern, repeats=repeats)
        t["lax_fwd"] = time_jax(jax.jit(raw), x, kern, repeats=repeats)
        t["cj_bwd"] = _time_fwd_bwd(ours, x, kern, repeats=repeats)
        t["lax_bwd"] = _time_fwd_bwd(raw, x, kern, repeats=repeats)
        if torch is not None:
            tx = _to_torch_cl(x)
            tw = torch.from_numpy(np.array(kern)).permute(2, 3, 0, 1).contiguous().requires_grad_(True)
            t["torch_fwd"], t["torch_bwd"] = _torch_case(
                lambda a, b: F.conv_transpose2d(a, b, stride=s, padding=p, output_padding=op), (tx, tw), repeats
            )
        name = f"conv_transpose2d_{n}x{h}x{w}x{cin}_k{k}s{s}p{p}op{op}_o{cout}_f32"
        rows += _rows(name, t, ("lax", "torch"))
    return rows


def pool_cases(quick: bool):
    # (kind, N, H, W, C, window, stride, padding)
    if quick:
        return [("max", 2, 16, 16, 8, 3, 2, 1), ("avg", 2, 16, 16, 8, 2, 2, 0)]
    shapes = [(32, 112, 112, 64), (8, 56, 56, 64)]
    cases = []
    for shape in shapes:
        cases += [
            ("max", *shape, 3, 2, 1),  # the ResNet stem
            ("max", *shape, 2, 2, 0),
            ("avg", *shape, 3, 2, 1),
            ("avg", *shape, 2, 2, 0),
        ]
    return cases


def _lax_pool(kind, window, stride, padding):
    """The plain ``lax.reduce_window`` pool that JAX users write (XLA's gradients)."""
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    if kind == "max":
        return lambda x: lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pads)
    return lambda x: lax.reduce_window(x, 0.0, lax.add, dims, strides, pads) / (window * window)


def bench_pool(quick: bool, repeats: int):
    rows = []
    for kind, n, h, w, c, k, s, p in pool_cases(quick):
        x = jnp.asarray(np.random.default_rng(0).standard_normal((n, h, w, c)), jnp.float32)
        op = cj.max_pool if kind == "max" else cj.avg_pool
        ours = functools.partial(op, window=k, stride=s, padding=p)
        raw = _lax_pool(kind, k, s, p)
        t = {}
        t["cj_fwd"] = time_jax(jax.jit(ours), x, repeats=repeats)
        t["lax_fwd"] = time_jax(jax.jit(raw), x, repeats=repeats)
        t["cj_bwd"] = _time_fwd_bwd(ours, x, repeats=repeats)
        t["lax_bwd"] = _time_fwd_bwd(raw, x, repeats=repeats)
        if torch is not None:
            tx = _to_torch_cl(x)
            tfn = F.max_pool2d if kind == "max" else F.avg_pool2d
            t["torch_fwd"], t["torch_bwd"] = _torch_case(lambda a: tfn(a, k, s, p), (tx,), repeats)
        name = f"{kind}_pool2d_{n}x{h}x{w}x{c}_k{k}s{s}p{p}_f32"
        rows += _rows(name, t, ("lax", "torch"))
    return rows


SECTIONS = {"conv": bench_conv, "transpose": bench_transpose, "pool": bench_pool}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="ops", help="name of the JSON file in benchmarks/results")
    args = parser.parse_args(argv)
    if torch is not None and jax.default_backend() == "cpu":
        torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    env = environment()
    print_header("cnn_jax ops benchmark (median ms; ratio = cnn_jax / other, < 1 is faster)", env)
    rows = []
    for name in args.section or list(SECTIONS):
        section = SECTIONS[name](args.quick, args.repeats)
        print(f"\n## {name}")
        print_table(section, list(section[0]))
        rows += section
    path = write_json(args.out, env, rows, quick=args.quick)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
