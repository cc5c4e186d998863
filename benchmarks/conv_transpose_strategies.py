"""Transposed convolution: which formulation is fastest, forward and forward+backward.

Strategies, all computing ``torch.nn.functional.conv_transpose2d`` semantics on a
channels_last input ``(N, H, W, C_in)`` with kernel ``(kh, kw, C_in, C_out)``:

* ``lhs_dilation``: one ``lax.conv_general_dilated`` with ``lhs_dilation=stride`` (what
  ``lax.conv_transpose`` and autodiff of a strided conv emit);
* ``interior_pad``: ``lax.pad`` with ``interior = stride - 1``, then a stride-1 conv;
* ``phase``: ``cj.conv_transpose``: ``prod(stride)`` stride-1 convs of the undilated
  input with sub-kernels, interleaved by a reshape (sub-pixel decomposition);
* ``phase_custom_vjp``: the phase forward with a hand-written backward (``dx`` is the
  strided forward conv, ``dkernel`` is ``cj.conv_kernel_grad``);
* ``torch``: ``torch.nn.functional.conv_transpose2d`` on the same machine (NCHW).

Kept: ``phase`` with plain autodiff. On the project's 2-core CPU it is as fast as the
others forward and 3-13x faster than ``lhs_dilation`` (2-5x faster than
``interior_pad``) forward+backward. ``phase_custom_vjp`` was 0-30% faster again in
some runs but within the noise in others, and a ``custom_vjp`` would cost
forward-mode autodiff (``jax.jvp``/``jacfwd``) of ``conv_transpose``, so it stays here
as a measured alternative only.

Timed with the suites' harness (``benchmarks/_harness.py``: the first call apart,
then interleaved samples, ``block_until_ready``, the median). Writes
``benchmarks/results/conv_transpose_strategies.json``.

Run: ``python -m benchmarks.conv_transpose_strategies [--repeats 10]`` (or
``python benchmarks/conv_transpose_strategies.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnn_jax as cj  # noqa: E402
from benchmarks._harness import Impl, environment, jax_wait, measure  # noqa: E402

# (name, x shape NHWC, kernel size, stride, padding, output_padding, C_out)
CASES = [
    ("dcgan_8x32x32x64_k4s2p1", (8, 32, 32, 64), 4, 2, 1, 0, 32),
    ("unet_8x32x32x64_k2s2", (8, 32, 32, 64), 2, 2, 0, 0, 32),
    ("k3s2p1op1_8x32x32x64", (8, 32, 32, 64), 3, 2, 1, 1, 32),
    ("dcgan_8x16x16x128_k4s2p1", (8, 16, 16, 128), 4, 2, 1, 0, 64),
]


def _flipped_io(w):
    """(kh, kw, C_in, C_out) transposed-conv kernel -> HWIO kernel of the equivalent conv."""
    return jnp.flip(w, axis=(0, 1))


def lhs_dilation(x, w, k, s, p, op):
    pad = [(k - 1 - p, k - 1 - p + op)] * 2
    return lax.conv_general_dilated(
        x,
        _flipped_io(w),
        (1, 1),
        pad,
        lhs_dilation=(s, s),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def interior_pad(x, w, k, s, p, op):
    lo, hi = k - 1 - p, k - 1 - p + op
    xp = lax.pad(
        x, jnp.zeros((), x.dtype), [(0, 0, 0), (lo, hi, s - 1), (lo, hi, s - 1), (0, 0, 0)]
    )
    return lax.conv_general_dilated(
        xp, _flipped_io(w), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def phase(x, w, k, s, p, op):
    return cj.conv_transpose(x, w, stride=s, padding=p, output_padding=op)


def make_phase_custom_vjp(k, s, p, op):
    @jax.custom_vjp
    def f(x, w):
        return cj.conv_transpose(x, w, stride=s, padding=p, output_padding=op)

    def fwd(x, w):
        return f(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        # conv_transpose(x, w) is conv_input_grad of conv(., w_conv) with w_conv HWIO
        # = swap of w's last two axes; its gradients are that conv and its kernel grad.
        w_conv = jnp.swapaxes(w, 2, 3)
        dx = cj.conv(g, w_conv, stride=s, padding=p)
        dw_conv = cj.conv_kernel_grad(g, x, w_conv.shape, stride=s, padding=p)
        return dx, jnp.swapaxes(dw_conv, 2, 3)

    f.defvjp(fwd, bwd)
    return f


def _torch_impls(x, w, k, s, p, op):
    try:
        import torch
    except ImportError:
        return []
    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)
    wt = torch.tensor(np.asarray(w).transpose(2, 3, 0, 1).copy(), requires_grad=True)

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.conv_transpose2d(
                xt, wt, stride=s, padding=p, output_padding=op
            )

    def fwd_bwd():
        y = torch.nn.functional.conv_transpose2d(xt, wt, stride=s, padding=p, output_padding=op)
        return torch.autograd.grad((y * y).sum(), (xt, wt))

    return [Impl("torch fwd", fwd, lambda _: None), Impl("torch fwd+bwd", fwd_bwd, lambda _: None)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    env = environment()
    print(
        "# transposed convolution strategies (median ms); "
        + ", ".join(f"{k}={env[k]}" for k in ("device", "jax", "torch"))
    )
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'case':30s} {'strategy':18s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'max|err|':>9s}")
    for name, xshape, k, s, p, op, c_out in CASES:
        x = jnp.asarray(rng.standard_normal(xshape), jnp.float32)
        w = jnp.asarray(
            rng.standard_normal((k, k, xshape[-1], c_out)) / (k * k * xshape[-1]) ** 0.5,
            jnp.float32,
        )
        strategies = {
            "lhs_dilation": lambda x, w: lhs_dilation(x, w, k, s, p, op),
            "interior_pad": lambda x, w: interior_pad(x, w, k, s, p, op),
            "phase": lambda x, w: phase(x, w, k, s, p, op),
            "phase_custom_vjp": make_phase_custom_vjp(k, s, p, op),
        }
        impls, errs, ref = [], {}, None
        for sname, f in strategies.items():
            fwd = jax.jit(f)
            fwd_bwd = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
            y = fwd(x, w)
            ref = y if ref is None else ref
            errs[sname] = float(jnp.max(jnp.abs(y - ref)))
            impls += [
                Impl(f"{sname} fwd", lambda fwd=fwd: fwd(x, w), jax_wait),
                Impl(f"{sname} fwd+bwd", lambda fb=fwd_bwd: fb(x, w), jax_wait),
            ]
        impls += _torch_impls(x, w, k, s, p, op)
        t = measure(impls, repeats=args.repeats, min_sample_s=0.02, max_case_s=20.0)
        for sname in [*strategies, "torch"]:
            if f"{sname} fwd" not in t:
                continue
            t_f, t_fb = t[f"{sname} fwd"]["median_ms"], t[f"{sname} fwd+bwd"]["median_ms"]
            rows.append(
                dict(
                    case=name, strategy=sname, fwd_ms=t_f, fwd_bwd_ms=t_fb, max_err=errs.get(sname)
                )
            )
            err = f"{errs[sname]:9.1e}" if sname in errs else f"{'':>9s}"
            print(f"{name:30s} {sname:18s} {t_f:9.2f} {t_fb:11.2f} {err}", flush=True)
    path = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "conv_transpose_strategies.json"
    )
    with open(path, "w") as f:
        json.dump({"environment": env, "results": rows}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
