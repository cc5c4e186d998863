"""Differential fuzzing of ``cnn_jax.ops`` against PyTorch CPU, values and VJPs in float64
(and, for the pools, bfloat16 and float16).

Every config is drawn from ``numpy.random.default_rng([seed, index])``, so config
``index`` of a seed replays alone (``--only``). A config is one op call that PyTorch
also has: conv, conv_transpose, max/avg/lp pools, adaptive and global pools, upsample,
pixel (un)shuffle, unfold/fold and pad; 1-, 2- and 3-D where PyTorch has them, both
layouts, unbatched inputs where both libraries take them.

Two kinds of config:

* valid: arguments drawn from ranges both libraries accept. cnn_jax must return the
  same values as PyTorch and the same VJP (of ``sum(y * g)`` for a random ``g``).
  The cnn_jax side is called on channels_first arrays with the layout conversion
  inside the differentiated function, so both VJPs are in PyTorch's layout.
* half precision (``HALF_SHARE`` of the valid pool configs, ``HALF_OPS``): the same
  config with ``x`` rounded to bfloat16 or float16 and run in that dtype by both
  libraries, compared within a few units of the dtype's rounding (``HALF_TOL``).
* invalid (``--invalid`` share, default 1/4): some arguments drawn from wider ranges
  (zero, negative, too large, mismatched channels, empty dims, integer dtypes). Then
  either both libraries raise (cnn_jax with ``ValueError``/``TypeError``) or both
  return, and then equal values. A differing decision listed in ``KNOWN`` is counted
  apart, with its reason.

Run ``python -m tests.fuzz --n 20000 --seed 0``: it prints the number of configs,
the mismatches, and one line per mismatch with its config. ``tests/test_fuzz.py``
runs a fixed sample of it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

import cnn_jax as cj

RTOL, ATOL = 1e-9, 1e-10

# Half-precision draws: which ops, how often (of their valid configs), and the tolerance
# in units of the dtype's eps times the largest reference magnitude (values, VJPs).
# Both libraries round a float32 accumulation once where PyTorch has such a kernel, so
# values mostly agree exactly; PyTorch's half-precision backward kernels add in the
# half type, and its lp_pool rounds the power, the mean and the root separately,
# which measured up to 1.1 (values) and 1.2 (VJPs) of these units.
HALF_OPS = (
    "avg_pool",
    "lp_pool",
    "adaptive_avg_pool",
    "global_avg_pool",
    "max_pool",
    "adaptive_max_pool",
    "global_max_pool",
)
HALF_SHARE = 0.3
HALF_TOL = {"value": 2.0, "vjp": 3.0}
_TORCH_HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}

# Where the two libraries decide differently on purpose: (op, predicate on the config,
# reason). A config that matches one of these and disagrees only in raise/return is
# counted as "known", not as a mismatch.
KNOWN: list[tuple[str, Callable[[dict], bool], str]] = []


def known(op, reason):
    """Register ``predicate(config, kind) -> bool`` as a deliberate difference (``kind``
    as in ``_known_reason``)."""

    def register(predicate):
        KNOWN.append((op, predicate, reason))
        return predicate

    return register


@known(
    "*",
    "dtype rule (ops/_args.py DTYPE_RULES): cnn_jax takes integer x exactly where "
    "the result is exact (selection, data movement, sums); PyTorch's CPU kernels take "
    "or refuse integers op by op and dtype by dtype, and its int64 avg_pool truncates",
)
def _integer_dtype(config, kind):
    return kind in ("torch_raised", "ours_raised") and "dtype" in config


@known(
    "*",
    "output_size 0: PyTorch's adaptive pools return an empty array, cnn_jax "
    "raises ValueError (API: entries must be >= 1)",
)
def _zero_output_size(config, kind):
    out = config.get("output_size")
    out = out if isinstance(out, tuple) else (out,)
    return (
        kind == "ours_raised"
        and config["op"].startswith("adaptive")
        and any(o is not None and o <= 0 for o in out)
    )


@known(
    "lp_pool",
    "p <= 0: PyTorch computes a (meaningless) power mean, cnn_jax raises "
    "ValueError (API: p must be > 0)",
)
def _bad_p(config, kind):
    return kind == "ours_raised" and config["p"] <= 0


@known(
    "upsample",
    "torch 2.13's 2-D nearest kernel repeats each pixel when the output is an "
    "integer multiple of the input, ignoring a non-integer scale_factor; its "
    "1-D and 3-D kernels and its documentation (recompute_scale_factor=None) "
    "read floor(dst / scale_factor), as cnn_jax does",
)
def _nearest_2d_multiple(config, kind):
    sf = config["scale_factor"]
    if kind != "value" or config["method"] != "nearest" or config["n"] != 2 or sf is None:
        return False
    sf = sf if isinstance(sf, tuple) else (sf,) * 2
    return any(
        float(s) != int(s) and math.floor(i * s) % i == 0 for i, s in zip(config["x"][-2:], sf)
    )


@known(
    "avg_pool",
    "PyTorch's avg_pool3d (and so lp_pool3d) refuses an input smaller than "
    "the window before padding; its 1-D/2-D pools and cnn_jax only need the "
    "window to fit the padded input",
)
def _avg3d_small(config, kind):
    x = config["x"][-config["n"] :]
    w = config["window"]
    w = (w,) * config["n"] if isinstance(w, int) else w
    return kind == "torch_raised" and config["n"] == 3 and any(i < k for i, k in zip(x, w))


KNOWN.append(("lp_pool", _avg3d_small, KNOWN[-1][2]))


@known("pad", "API.md: pad rejects negative amounts (PyTorch's F.pad crops with them)")
def _negative_pad(config, kind):
    p = config["padding"]
    flat = [v for item in p for v in (item if isinstance(item, tuple) else (item,))]
    return kind == "ours_raised" and min(flat) < 0


@known(
    "*",
    "an empty spatial dim: PyTorch's adaptive/global average is NaN (a mean of "
    "nothing), cnn_jax raises ValueError (PyTorch's max pools raise too)",
)
def _empty_mean(config, kind):
    return (
        kind == "ours_raised"
        and config["op"] in ("adaptive_avg_pool", "global_avg_pool")
        and 0 in config["x"][-config["n"] :]
    )


@known(
    "max_pool",
    "a dilated window that lies entirely in the padding: both return -inf; "
    "PyTorch's backward sends that window's gradient to an element past its "
    "start (wrong, and max_pool3d's writes out of bounds: segfault or heap "
    "corruption in torch 2.13), cnn_jax to none (the output is constant). "
    "Values are compared; PyTorch's backward is not run",
)
def _window_all_padding(config, kind):
    n = config["n"]
    as_tuple = lambda v, d: (d,) * n if v is None else ((v,) * n if isinstance(v, int) else v)
    k = as_tuple(config["window"], 1)
    s = as_tuple(config["stride"], None) if config["stride"] is not None else k
    d, p = as_tuple(config["dilation"], 1), as_tuple(config["padding"], 0)
    for size, kk, ss, dd, pp in zip(config["x"][-n:], k, s, d, p):
        out = (size + 2 * pp - dd * (kk - 1) - 1 + (ss - 1 if config["ceil_mode"] else 0)) // ss + 1
        for o in range(out):
            if all(not 0 <= o * ss - pp + j * dd < size for j in range(kk)):
                return kind == "vjp"
    return False


@dataclass
class Case:
    """One op call: inputs (channels_first numpy), our function and PyTorch's."""

    config: dict
    inputs: list  # numpy arrays, PyTorch's layout
    ours: Callable  # jnp arrays (PyTorch layout) -> jnp array (PyTorch layout)
    theirs: Callable  # torch tensors -> torch tensor
    grad: bool = True  # compare VJPs (float inputs, differentiable op)
    grad_oracle: Callable | None = None  # (inputs, g) -> VJPs, replaces torch backward
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _to_layout(a, layout, batched):
    """PyTorch layout -> ours, inside the differentiated function."""
    if layout == "channels_first":
        return a
    return jnp.moveaxis(a, 1 if batched else 0, -1)


def _from_layout(a, layout, batched):
    if layout == "channels_first":
        return a
    return jnp.moveaxis(a, -1, 1 if batched else 0)


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _ints(rng, lo, hi, n):
    """``n`` ints in ``[lo, hi]``."""
    return tuple(int(v) for v in rng.integers(lo, hi + 1, n))


def _per_dim(rng, values, n):
    """An int (same every dim) or a tuple, as a user would pass it."""
    return values[0] if rng.random() < 0.4 and len(set(values)) == 1 else tuple(values)


def _x(rng, shape, ties=False):
    if ties:  # small integers: many ties, exercises first-maximum tie breaking
        return rng.integers(-2, 3, shape).astype(np.float64)
    return rng.standard_normal(shape)


def _wide(rng, invalid, valid_lo, valid_hi, wide_lo=-1, wide_hi=None):
    """An int from the valid range, or (invalid configs, 1 time in 4) a wider one."""
    if invalid and rng.random() < 0.25:
        return int(rng.integers(wide_lo, (wide_hi if wide_hi is not None else valid_hi + 3) + 1))
    return int(rng.integers(valid_lo, valid_hi + 1))


def _maybe_int_dtype(rng, invalid, inputs, config):
    """Invalid configs sometimes pass an integer x (int64 in torch, int64 here)."""
    if invalid and rng.random() < 0.15:
        dtype = _pick(rng, ["int64", "int32"])
        config["dtype"] = dtype
        inputs[0] = np.round(inputs[0] * 2).astype(dtype)
        return True
    return False


# --------------------------------------------------------------------------- generators


def _conv_geometry(rng, invalid, k_high, k_wide):
    """``(n, layout, batched, g, c_in, c_out, k, s, d)`` of a random (transposed) conv."""
    n = int(rng.integers(1, 4))
    layout = _pick(rng, ["channels_last", "channels_first"])
    batched = rng.random() < 0.8
    g = _pick(rng, [1, 1, 2])
    c_in, c_out = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
    k = tuple(_wide(rng, invalid, 1, k_high, 1, k_wide) for _ in range(n))
    s = tuple(_wide(rng, invalid, 1, 3, 0) for _ in range(n))
    d = tuple(_wide(rng, invalid, 1, 2, 0) for _ in range(n))
    return n, layout, batched, g, c_in, c_out, k, s, d


def gen_conv(rng, invalid):
    n, layout, batched, g, c_in, c_out, k, s, d = _conv_geometry(rng, invalid, 3, 6)
    mode = _pick(rng, ["zeros", "zeros", "reflect", "replicate", "circular"])
    kind = _pick(
        rng, ["int", "tuple", "valid", "same"] if max(s) == 1 else ["int", "tuple", "valid"]
    )
    if kind == "int":
        padding = _wide(rng, invalid, 0, 2)
    elif kind == "tuple":
        padding = tuple(_wide(rng, invalid, 0, 2) for _ in range(n))
    else:
        padding = kind
    pads = (padding,) * n if isinstance(padding, int) else padding
    sp = []
    for i in range(n):
        eff = max(d[i], 1) * (k[i] - 1) + 1
        p = pads[i] if isinstance(pads, tuple) and isinstance(pads[i], int) else 0
        lo_size = max(eff - 2 * max(p, 0), 1)
        if mode in ("reflect", "circular"):
            lo_size = max(lo_size, p + 1)
        sp.append(_wide(rng, invalid, lo_size, lo_size + 3, 0, lo_size + 3))
    g_arg = g if not (invalid and rng.random() < 0.1) else _pick(rng, [3, 0, -1])
    config = dict(
        op="conv",
        n=n,
        layout=layout,
        batched=batched,
        x=(2, c_in, *sp) if batched else (c_in, *sp),
        kernel=(c_out, c_in // g, *k),
        stride=_per_dim(rng, s, n),
        padding=padding,
        dilation=_per_dim(rng, d, n),
        groups=g_arg,
        padding_mode=mode,
        bias=rng.random() < 0.5,
        flip=rng.random() < 0.2,
    )
    if invalid and rng.random() < 0.1:  # mismatched in-channels
        config["kernel"] = (c_out, c_in // g + 1, *k)
    inputs = [_x(rng, config["x"]), _x(rng, config["kernel"])]
    if config["bias"]:
        inputs.append(_x(rng, (c_out,)))
    _maybe_int_dtype(rng, invalid, inputs, config)
    if "dtype" in config:
        inputs[1:] = [a.round().astype(config["dtype"]) for a in inputs[1:]]
    c = config
    axes = tuple(range(n)) if layout == "channels_last" else tuple(range(2, n + 2))

    def ours(x, w, b=None):
        if layout == "channels_last":
            w = jnp.moveaxis(w, (0, 1), (-1, -2))  # OIHW -> HWIO
        y = cj.conv(
            _to_layout(x, layout, batched),
            w,
            b,
            stride=c["stride"],
            padding=c["padding"],
            dilation=c["dilation"],
            groups=c["groups"],
            padding_mode=c["padding_mode"],
            flip=c["flip"],
            layout=layout,
        )
        return _from_layout(y, layout, batched)

    def theirs(x, w, b=None):
        fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
        if c["flip"]:
            w = torch.flip(w, dims=tuple(range(2, n + 2)))
        if c["padding_mode"] != "zeros" and c["padding"] not in ("valid",):
            p = c["padding"]
            if not isinstance(p, str) and min((p,) if isinstance(p, int) else p) < 0:
                raise RuntimeError("negative padding")  # as nn.Conv*d; F.pad would crop
            if p == "same":
                eff = [dd * (kk - 1) for kk, dd in zip(k, d)]
                flat = [v for e in reversed(eff) for v in (e // 2, e - e // 2)]
            else:
                p = (p,) * n if isinstance(p, int) else p
                flat = [v for pp in reversed(p) for v in (pp, pp)]
            x = F.pad(x, flat, mode=c["padding_mode"])
            return fn(x, w, b, c["stride"], 0, c["dilation"], c["groups"])
        return fn(x, w, b, c["stride"], c["padding"], c["dilation"], c["groups"])

    del axes
    return Case(config, inputs, ours, theirs)


def gen_conv_transpose(rng, invalid):
    n, layout, batched, g, c_in, c_out, k, s, d = _conv_geometry(rng, invalid, 4, 5)
    sp = tuple(_wide(rng, invalid, 1, 4, 0) for _ in range(n))
    op_pad = tuple(_wide(rng, invalid, 0, max(max(ss, dd) - 1, 0), 0, 3) for ss, dd in zip(s, d))
    padding = []
    for i in range(n):
        out = (sp[i] - 1) * s[i] + d[i] * (k[i] - 1) + op_pad[i] + 1
        padding.append(_wide(rng, invalid, 0, max(min((out - 1) // 2, 2), 0), -1, 4))
    config = dict(
        op="conv_transpose",
        n=n,
        layout=layout,
        batched=batched,
        x=(2, c_in, *sp) if batched else (c_in, *sp),
        kernel=(c_in, c_out // g, *k),
        stride=_per_dim(rng, s, n),
        padding=_per_dim(rng, padding, n),
        output_padding=_per_dim(rng, op_pad, n),
        dilation=_per_dim(rng, d, n),
        groups=g,
        bias=rng.random() < 0.5,
    )
    inputs = [_x(rng, config["x"]), _x(rng, config["kernel"])]
    if config["bias"]:
        inputs.append(_x(rng, (c_out,)))
    c = config

    def ours(x, w, b=None):
        if layout == "channels_last":
            w = jnp.moveaxis(w, (0, 1), (-2, -1))  # (I, O/G, *k) -> (*k, I, O/G)
        y = cj.conv_transpose(
            _to_layout(x, layout, batched),
            w,
            b,
            stride=c["stride"],
            padding=c["padding"],
            output_padding=c["output_padding"],
            dilation=c["dilation"],
            groups=c["groups"],
            layout=layout,
        )
        return _from_layout(y, layout, batched)

    def theirs(x, w, b=None):
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
        return fn(
            x, w, b, c["stride"], c["padding"], c["output_padding"], c["groups"], c["dilation"]
        )

    return Case(config, inputs, ours, theirs)


def _pool_common(rng, invalid, max_n=3, dilation=True):
    n = int(rng.integers(1, max_n + 1))
    layout = _pick(rng, ["channels_last", "channels_first"])
    batched = rng.random() < 0.8
    k = tuple(_wide(rng, invalid, 1, 3, 0, 5) for _ in range(n))
    s = None if rng.random() < 0.3 else tuple(_wide(rng, invalid, 1, 3, 0) for _ in range(n))
    d = tuple(_wide(rng, invalid, 1, 2, 0) for _ in range(n)) if dilation else (1,) * n
    pad = tuple(_wide(rng, invalid, 0, max(kk, 0) // 2, -1, 3) for kk in k)
    sp = []
    for i in range(n):
        eff = max(d[i], 0) * (max(k[i], 1) - 1) + 1
        lo_size = max(eff - 2 * max(pad[i], 0), 1)
        sp.append(_wide(rng, invalid, lo_size, lo_size + 4, 0, lo_size + 4))
    c = 2
    x_shape = (2, c, *sp) if batched else (c, *sp)
    return n, layout, batched, k, s, d, pad, x_shape


def _window_arg(rng, k, batched):
    # An int window reads x as batched; unbatched inputs need the tuple.
    return k[0] if batched and len(set(k)) == 1 and rng.random() < 0.4 else tuple(k)


def gen_max_pool(rng, invalid):
    n, layout, batched, k, s, d, pad, x_shape = _pool_common(rng, invalid)
    config = dict(
        op="max_pool",
        n=n,
        layout=layout,
        batched=batched,
        x=x_shape,
        window=_window_arg(rng, k, batched),
        stride=s and _per_dim(rng, s, n),
        padding=_per_dim(rng, pad, n),
        dilation=_per_dim(rng, d, n),
        ceil_mode=rng.random() < 0.4,
        ties=rng.random() < 0.3,
    )
    inputs = [_x(rng, x_shape, config["ties"])]
    _maybe_int_dtype(rng, invalid, inputs, config)
    c = config

    def ours(x):
        y = cj.max_pool(
            _to_layout(x, layout, batched),
            c["window"],
            c["stride"],
            padding=c["padding"],
            dilation=c["dilation"],
            ceil_mode=c["ceil_mode"],
            layout=layout,
        )
        return _from_layout(y, layout, batched)

    def theirs(x):
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
        return fn(
            x,
            k,
            c["stride"] if c["stride"] is not None else None,
            c["padding"],
            c["dilation"],
            ceil_mode=c["ceil_mode"],
        )

    return Case(config, inputs, ours, theirs)


def gen_avg_pool(rng, invalid):
    n, layout, batched, k, s, _, pad, x_shape = _pool_common(rng, invalid, dilation=False)
    div = None
    if n > 1 and rng.random() < 0.2:  # F.avg_pool1d has no divisor_override
        div = _wide(rng, invalid, 1, 5, -1, 5)
    config = dict(
        op="avg_pool",
        n=n,
        layout=layout,
        batched=batched,
        x=x_shape,
        window=_window_arg(rng, k, batched),
        stride=s and _per_dim(rng, s, n),
        padding=_per_dim(rng, pad, n),
        ceil_mode=rng.random() < 0.4,
        count_include_pad=rng.random() < 0.5,
        divisor_override=div,
    )
    inputs = [_x(rng, x_shape)]
    _maybe_int_dtype(rng, invalid, inputs, config)
    c = config

    def ours(x):
        y = cj.avg_pool(
            _to_layout(x, layout, batched),
            c["window"],
            c["stride"],
            padding=c["padding"],
            ceil_mode=c["ceil_mode"],
            count_include_pad=c["count_include_pad"],
            divisor_override=c["divisor_override"],
            layout=layout,
        )
        return _from_layout(y, layout, batched)

    def theirs(x):
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        kw = dict(ceil_mode=c["ceil_mode"], count_include_pad=c["count_include_pad"])
        if n > 1:
            kw["divisor_override"] = c["divisor_override"]
        return fn(x, k, c["stride"], c["padding"], **kw)

    return Case(config, inputs, ours, theirs)


def gen_lp_pool(rng, invalid):
    n, layout, batched, k, s, _, _, x_shape = _pool_common(rng, invalid, dilation=False)
    p = _pick(rng, [1, 2, 3, 1.5, 2.5])
    if invalid and rng.random() < 0.2:
        p = _pick(rng, [0, -1.0])
    config = dict(
        op="lp_pool",
        n=n,
        layout=layout,
        batched=batched,
        x=x_shape,
        p=p,
        window=_window_arg(rng, k, batched),
        stride=s and _per_dim(rng, s, n),
        ceil_mode=rng.random() < 0.4,
    )
    # Positive inputs: a fractional power of a negative number is NaN in both.
    inputs = [np.abs(_x(rng, x_shape)) + 0.1]
    _maybe_int_dtype(rng, invalid, inputs, config)
    c = config

    def ours(x):
        y = cj.lp_pool(
            _to_layout(x, layout, batched),
            c["p"],
            c["window"],
            c["stride"],
            ceil_mode=c["ceil_mode"],
            layout=layout,
        )
        return _from_layout(y, layout, batched)

    def theirs(x):
        fn = (F.lp_pool1d, F.lp_pool2d, F.lp_pool3d)[n - 1]
        return fn(x, c["p"], k if n > 1 else k[0], c["stride"], ceil_mode=c["ceil_mode"])

    return Case(config, inputs, ours, theirs)


def gen_adaptive(rng, invalid):
    reduce = _pick(rng, ["avg", "max"])
    n = int(rng.integers(1, 4))
    layout = _pick(rng, ["channels_last", "channels_first"])
    batched = rng.random() < 0.8
    sp = tuple(_wide(rng, invalid, 1, 7, 0) for _ in range(n))
    out = [_wide(rng, invalid, 1, 8, 0) for _ in range(n)]
    # None keeps a dim; PyTorch's 1-D adaptive pools take no None.
    out = tuple(None if n > 1 and rng.random() < 0.15 else o for o in out)
    if batched and rng.random() < 0.3 and out[0] is not None and len(set(out)) == 1:
        out = out[0]
    x_shape = (2, 3, *sp) if batched else (3, *sp)
    ties = reduce == "max" and rng.random() < 0.3
    config = dict(
        op=f"adaptive_{reduce}_pool",
        n=n,
        layout=layout,
        batched=batched,
        x=x_shape,
        output_size=out,
        ties=ties,
    )
    inputs = [_x(rng, x_shape, ties)]
    _maybe_int_dtype(rng, invalid, inputs, config)
    c = config

    def ours(x):
        fn = cj.adaptive_avg_pool if reduce == "avg" else cj.adaptive_max_pool
        return _from_layout(
            fn(_to_layout(x, layout, batched), c["output_size"], layout=layout), layout, batched
        )

    def theirs(x):
        fns = (
            (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
            if reduce == "avg"
            else (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)
        )
        return fns[n - 1](x, c["output_size"])

    return Case(config, inputs, ours, theirs)


def gen_global(rng, invalid):
    reduce = _pick(rng, ["avg", "max"])
    n = int(rng.integers(1, 4))
    layout = _pick(rng, ["channels_last", "channels_first"])
    sp = tuple(_wide(rng, invalid, 1, 6, 0) for _ in range(n))
    keepdims = rng.random() < 0.5
    ties = reduce == "max" and rng.random() < 0.3
    config = dict(
        op=f"global_{reduce}_pool",
        n=n,
        layout=layout,
        batched=True,
        x=(2, 3, *sp),
        keepdims=keepdims,
        ties=ties,
    )
    inputs = [_x(rng, config["x"], ties)]
    _maybe_int_dtype(rng, invalid, inputs, config)

    def ours(x):
        fn = cj.global_avg_pool if reduce == "avg" else cj.global_max_pool
        y = fn(_to_layout(x, layout, True), keepdims=keepdims, layout=layout)
        return _from_layout(y, layout, True) if keepdims else y

    def theirs(x):
        fns = (
            (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
            if reduce == "avg"
            else (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)
        )
        y = fns[n - 1](x, 1)
        return y if keepdims else y.reshape(y.shape[:2])

    return Case(config, inputs, ours, theirs)


def _nearest_vjp(theirs, x_shape):
    """The VJP of nearest resizing from PyTorch's *forward* only: push the flat index of
    every input element through it, then sum ``g`` into the indices it read. PyTorch's
    own backward disagrees with its forward for some non-integer scales."""

    def oracle(inputs, g):
        index = torch.arange(math.prod(x_shape), dtype=torch.float64).reshape(x_shape)
        src = theirs(index).numpy().astype(np.int64).ravel()
        dx = np.bincount(src, weights=np.asarray(g).ravel(), minlength=math.prod(x_shape))
        return [dx.reshape(x_shape)]

    return oracle


def gen_upsample(rng, invalid):
    n = int(rng.integers(1, 4))
    layout = _pick(rng, ["channels_last", "channels_first"])
    method = _pick(rng, ["nearest", "linear"])
    sp = tuple(_wide(rng, invalid, 1, 5, 0) for _ in range(n))
    align = method == "linear" and rng.random() < 0.4
    if rng.random() < 0.5:
        scale = tuple(_pick(rng, [1, 2, 3, 0.5, 1.5, 1.7, 2.3, 0.75]) for _ in range(n))
        if invalid and rng.random() < 0.2:
            scale = tuple(_pick(rng, [0.1, 0, -1.0]) for _ in range(n))
        scale = scale[0] if len(set(scale)) == 1 and rng.random() < 0.5 else scale
        size = None
    else:
        size = tuple(_wide(rng, invalid, 1, 9, 0) for _ in range(n))
        scale = None
    config = dict(
        op="upsample",
        n=n,
        layout=layout,
        batched=True,
        x=(2, 2, *sp),
        scale_factor=scale,
        size=size,
        method=method,
        align_corners=align,
    )
    inputs = [_x(rng, config["x"])]
    _maybe_int_dtype(rng, invalid, inputs, config)
    c = config

    def ours(x):
        y = cj.upsample(
            _to_layout(x, layout, True),
            c["scale_factor"],
            size=c["size"],
            method=c["method"],
            align_corners=c["align_corners"],
            layout=layout,
        )
        return _from_layout(y, layout, True)

    def theirs(x):
        mode = "nearest" if method == "nearest" else ("linear", "bilinear", "trilinear")[n - 1]
        sf = c["scale_factor"]
        sf = list(sf) if isinstance(sf, tuple) else sf
        return F.interpolate(
            x,
            size=list(c["size"]) if c["size"] else None,
            scale_factor=sf,
            mode=mode,
            align_corners=c["align_corners"] if method == "linear" else None,
        )

    case = Case(config, inputs, ours, theirs)
    if method == "nearest":
        case.grad_oracle = _nearest_vjp(theirs, config["x"])
    return case


def gen_pixel_shuffle(rng, invalid):
    # PyTorch's pixel (un)shuffle is 2-D only.
    layout = _pick(rng, ["channels_last", "channels_first"])
    r = _wide(rng, invalid, 1, 3, 0)
    if rng.random() < 0.5:
        op = "pixel_shuffle"
        c_in = max(r, 1) ** 2 * int(rng.integers(1, 3)) + (
            1 if invalid and rng.random() < 0.2 else 0
        )
        x_shape = (2, c_in, *_ints(rng, 1, 3, 2))
    else:
        op = "pixel_unshuffle"
        x_shape = (
            2,
            2,
            *(
                max(r, 1) * v + (1 if invalid and rng.random() < 0.2 else 0)
                for v in _ints(rng, 1, 3, 2)
            ),
        )
    config = dict(op=op, n=2, layout=layout, batched=True, x=x_shape, factor=r)
    inputs = [_x(rng, x_shape)]
    _maybe_int_dtype(rng, invalid, inputs, config)

    def ours(x):
        y = getattr(cj, op)(_to_layout(x, layout, True), r, layout=layout)
        return _from_layout(y, layout, True)

    def theirs(x):
        return getattr(F, op)(x, r)

    return Case(config, inputs, ours, theirs)


def gen_unfold(rng, invalid):
    # PyTorch's unfold/fold are 2-D only; channels_last rows are reordered to compare.
    layout = _pick(rng, ["channels_last", "channels_first"])
    batched = rng.random() < 0.8
    k = tuple(_wide(rng, invalid, 1, 3, 0, 4) for _ in range(2))
    s = tuple(_wide(rng, invalid, 1, 2, 0) for _ in range(2))
    d = tuple(_wide(rng, invalid, 1, 2, 0) for _ in range(2))
    p = tuple(_wide(rng, invalid, 0, 1, -1) for _ in range(2))
    sp = tuple(
        _wide(
            rng,
            invalid,
            max(dd * (kk - 1) + 1 - 2 * pp, 1),
            max(dd * (kk - 1) + 1 - 2 * pp, 1) + 3,
            0,
        )
        for kk, dd, pp in zip(k, d, p)
    )
    c_ch = int(rng.integers(1, 3))
    op = _pick(rng, ["unfold", "fold"])
    kw = dict(stride=_per_dim(rng, s, 2), padding=_per_dim(rng, p, 2), dilation=_per_dim(rng, d, 2))
    window = _per_dim(rng, k, 2) if batched else k
    if not batched and isinstance(window, int):
        window = (window, window)
    config = dict(op=op, n=2, layout=layout, batched=batched, window=window, **kw)
    kk = math.prod(max(v, 0) for v in k)
    if op == "unfold":
        x_shape = (2, c_ch, *sp) if batched else (c_ch, *sp)
    else:
        blocks = [
            (i + 2 * pp - dd * (kv - 1) - 1) // max(ss, 1) + 1
            for i, kv, ss, dd, pp in zip(sp, k, s, d, p)
        ]
        length = max(math.prod(max(b, 0) for b in blocks), 0) + (
            1 if invalid and rng.random() < 0.1 else 0
        )
        x_shape = (2, c_ch * kk, length) if batched else (c_ch * kk, length)
        config["output_size"] = sp
    config["x"] = x_shape
    inputs = [_x(rng, x_shape)]
    _maybe_int_dtype(rng, invalid, inputs, config)
    c = config

    def ours(x):
        b = x if batched else x[None]
        if op == "unfold":
            xin = _to_layout(b, layout, True)
            y = cj.unfold(
                xin if batched else xin[0],
                c["window"],
                stride=c["stride"],
                padding=c["padding"],
                dilation=c["dilation"],
                layout=layout,
            )
            y = y if batched else y[None]
            if layout == "channels_last":  # (N, L, K * C) -> (N, C * K, L)
                y = y.reshape(y.shape[0], y.shape[1], kk, c_ch).transpose(0, 3, 2, 1)
                y = y.reshape(y.shape[0], c_ch * kk, -1)
        else:
            if layout == "channels_last":  # (N, C * K, L) -> (N, L, K * C)
                b = b.reshape(b.shape[0], c_ch, kk, b.shape[-1]).transpose(0, 3, 2, 1)
                b = b.reshape(b.shape[0], b.shape[1], kk * c_ch)
            y = cj.fold(
                b if batched else b[0],
                c["output_size"],
                c["window"],
                stride=c["stride"],
                padding=c["padding"],
                dilation=c["dilation"],
                layout=layout,
            )
            y = _from_layout(y if batched else y[None], layout, True)
        return y if batched else y[0]

    def theirs(x):
        if op == "unfold":
            return F.unfold(x, c["window"], c["dilation"], c["padding"], c["stride"])
        return F.fold(x, c["output_size"], c["window"], c["dilation"], c["padding"], c["stride"])

    return Case(config, inputs, ours, theirs)


def gen_pad(rng, invalid):
    n = int(rng.integers(1, 4))
    layout = _pick(rng, ["channels_last", "channels_first"])
    mode = _pick(rng, ["zeros", "constant", "reflect", "replicate", "circular"])
    sp = tuple(_wide(rng, invalid, 1, 4, 0) for _ in range(n))
    # An empty dim (invalid configs) would leave reflect no valid amount: 0 then.
    top = [max(s - 1, 0) if mode == "reflect" else (s if mode == "circular" else 3) for s in sp]
    pads = tuple(
        (_wide(rng, invalid, 0, t, -1, t + 2), _wide(rng, invalid, 0, t, -1, t + 2)) for t in top
    )
    padding = pads
    if all(a == b for a, b in pads) and rng.random() < 0.5:
        padding = tuple(a for a, _ in pads)
    value = float(_pick(rng, [0.0, 1.5, -2.0]))
    if mode != "constant" and not invalid:  # only "constant" takes a value (both refuse)
        value = 0.0
    config = dict(
        op="pad",
        n=n,
        layout=layout,
        batched=True,
        x=(2, 2, *sp),
        padding=padding,
        mode=mode,
        value=value,
    )
    inputs = [_x(rng, config["x"])]
    _maybe_int_dtype(rng, invalid, inputs, config)
    c = config

    def ours(x):
        y = cj.pad(
            _to_layout(x, layout, True),
            c["padding"],
            mode=c["mode"],
            value=c["value"],
            layout=layout,
        )
        return _from_layout(y, layout, True)

    def theirs(x):
        flat = [v for lo_hi in reversed(pads) for v in lo_hi]
        if mode == "zeros":  # F.pad has no "zeros": constant 0, and like its other
            if c["value"] != 0:  # modes that take no value, it refuses one
                raise RuntimeError('Padding mode "zeros" doesn\'t take in value argument')
            return F.pad(x, flat)
        if mode == "constant":
            return F.pad(x, flat, value=c["value"])
        return F.pad(x, flat, mode=mode, value=c["value"])

    return Case(config, inputs, ours, theirs)


GENERATORS = {
    "conv": (gen_conv, 3),
    "conv_transpose": (gen_conv_transpose, 3),
    "max_pool": (gen_max_pool, 3),
    "avg_pool": (gen_avg_pool, 2),
    "lp_pool": (gen_lp_pool, 1),
    "adaptive": (gen_adaptive, 2),
    "global": (gen_global, 1),
    "upsample": (gen_upsample, 2),
    "pixel_shuffle": (gen_pixel_shuffle, 1),
    "unfold": (gen_unfold, 2),
    "pad": (gen_pad, 1),
}
_NAMES = list(GENERATORS)
_WEIGHTS = np.array([w for _, w in GENERATORS.values()], float)
_WEIGHTS /= _WEIGHTS.sum()


def make_case(
    seed: int, index: int, invalid_share: float = 0.25, half_share: float = HALF_SHARE
) -> Case:
    """Config ``index`` of ``seed``: reproducible alone."""
    rng = np.random.default_rng([seed, index])
    invalid = rng.random() < invalid_share
    name = _NAMES[int(rng.choice(len(_NAMES), p=_WEIGHTS))]
    case = GENERATORS[name][0](rng, invalid)
    case.config["invalid"] = invalid
    case.config["index"] = index
    case.extra["g_seed"] = int(rng.integers(2**31))
    _maybe_half(rng, case, half_share)  # drawn last: the float64 configs stay as they were
    return case


def _maybe_half(rng, case: Case, share: float) -> None:
    """A share of the valid pool configs runs in bfloat16 or float16 (``config["half"]``):
    the inputs are rounded to that dtype here (kept as float64 arrays), and both
    libraries are called in it."""
    c = case.config
    if c["op"] not in HALF_OPS or c["invalid"] or "dtype" in c or rng.random() >= share:
        return
    c["half"] = _pick(rng, ["bfloat16", "float16"])
    case.inputs = [
        np.asarray(a).astype(jnp.dtype(c["half"])).astype(np.float64) for a in case.inputs
    ]


def _torch_half_in_float32(config) -> bool:
    """Ops PyTorch's CPU has no float32-accumulating half kernel for: avg_pool3d (so
    lp_pool3d) has none at all, adaptive_avg_pool3d adds in the half type. There the
    reference is PyTorch in float32 on the same rounded inputs, rounded once to the
    dtype: what its 1-D/2-D kernels (and cnn_jax) compute."""
    return config["n"] == 3 and config["op"] in (
        "avg_pool",
        "lp_pool",
        "adaptive_avg_pool",
        "global_avg_pool",
    )


# --------------------------------------------------------------------------- runner


@dataclass
class Result:
    status: str  # "ok", "both_raise", "known", "mismatch"
    detail: str = ""


def _is_float(a):
    return np.issubdtype(np.asarray(a).dtype, np.floating)


def _close(a, b, half=None, what="value"):
    """Equal within float64's ``RTOL``/``ATOL``, or for a ``half`` dtype within
    ``HALF_TOL[what]`` times its eps times the largest finite ``|b|`` (and one eps
    relative)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False, f"shape {a.shape} != torch {b.shape}"
    rtol, atol = RTOL, ATOL
    if half is not None:
        rtol = float(jnp.finfo(half).eps)
        finite = np.abs(b[np.isfinite(b)])
        atol = HALF_TOL[what] * rtol * (float(finite.max()) if finite.size else 0.0)
    if not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        err = np.nanmax(np.abs(a - b)) if a.size else 0.0
        return False, f"max abs err {err:.3g}"
    return True, ""


def _known_reason(config, kind):
    """The reason of the ``KNOWN`` entry matching ``config`` for a disagreement of
    ``kind``: ``"torch_raised"``, ``"ours_raised"`` (only one library raised),
    ``"value"`` (different values) or ``"vjp"`` (equal values, different VJPs)."""
    for op, predicate, reason in KNOWN:
        if op in (config["op"], "*") and predicate(config, kind):
            return reason
    return None


def _fast_compile():
    """Lowest XLA optimisation: these configs are tiny and compiled once each."""
    from jax._src import config as jax_config

    stack = contextlib.ExitStack()
    for name, value in (("optimization_level", "O0"), ("exec_time_optimization_effort", -1.0)):
        state = getattr(jax_config, name, None)
        if state is not None:
            stack.enter_context(state(value))
    return stack


def _value_and_vjp(fn, g_seed, *args):
    """``y``, a random cotangent ``g`` and the VJP of ``sum(y * g)``, in one jitted call."""

    def run(*a):
        y, vjp = jax.vjp(fn, *a)
        # A fixed pseudo-random cotangent (no PRNG: threefry would double compile time),
        # computed in float32 at least and rounded to y's dtype.
        i = jnp.arange(y.size, dtype=jnp.promote_types(y.dtype, jnp.float32)).reshape(y.shape)
        g = (jnp.sin(i * 12.9898 + g_seed % 1000) * 2.0).astype(y.dtype)
        return y, g, vjp(g)

    return jax.jit(run)(*args)


def run_case(case: Case) -> Result:
    """Run one config in both libraries and compare (values, VJPs, or raising)."""
    config = case.config
    half = config.get("half")
    theirs = case.theirs
    if half is not None and _torch_half_in_float32(config):
        tdt = _TORCH_HALF[half]
        theirs = lambda *t: case.theirs(*(v.float() for v in t)).to(tdt)  # noqa: E731
    # PyTorch first.
    torch_err = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if half is None:
                ts = [
                    torch.tensor(a, requires_grad=case.grad and _is_float(a)) for a in case.inputs
                ]
            else:
                ts = [
                    torch.tensor(a).to(_TORCH_HALF[half]).requires_grad_(case.grad)
                    for a in case.inputs
                ]
            yt = theirs(*ts)
    except Exception as e:  # noqa: BLE001 - any PyTorch refusal counts as a refusal
        torch_err = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    # Then cnn_jax, in float64: forward and VJP in one jitted call, compiled at low
    # optimisation (compiling dominates the run time of tiny configs).
    our_err, our_err_type = None, None
    grad = case.grad and torch_err is None and all(_is_float(a) for a in case.inputs)
    with jax.enable_x64(True), _fast_compile():
        try:
            args = [jnp.asarray(a, half) for a in case.inputs]
            if grad:
                y, g, ours_dx = _value_and_vjp(case.ours, case.extra["g_seed"], *args)
                ours_dx = [np.asarray(v) for v in ours_dx]
                g = np.asarray(g)
            else:
                y = jax.jit(case.ours)(*args)
            y = np.asarray(y)
        except Exception as e:  # noqa: BLE001
            our_err, our_err_type = f"{type(e).__name__}: {str(e)[:160]}", type(e)
    if our_err is not None:
        if our_err_type not in (ValueError, TypeError):
            return Result("mismatch", f"cnn_jax raised {our_err} (want ValueError/TypeError)")
        if torch_err is not None:
            return Result("both_raise")
        reason = _known_reason(config, "ours_raised")
        if reason:
            return Result("known", reason)
        return Result("mismatch", f"cnn_jax raised {our_err}; torch returned")
    if torch_err is not None:
        reason = _known_reason(config, "torch_raised")
        if reason:
            return Result("known", reason)
        return Result("mismatch", f"torch raised {torch_err}; cnn_jax returned {y.shape}")
    ok, why = _close(y, yt.detach().to(torch.float64).numpy(), half)
    if not ok:
        reason = _known_reason(config, "value")
        if reason:
            return Result("known", reason)
        return Result("mismatch", f"value: {why}")
    if not grad or y.size == 0:
        return Result("ok")
    reason = _known_reason(config, "vjp")
    if reason:  # PyTorch's backward is wrong here (and may corrupt memory): not run
        return Result("known", reason)
    if case.grad_oracle is not None:
        ref_dx = case.grad_oracle(case.inputs, g)
        ours_dx = ours_dx[: len(ref_dx)]
    else:
        yt.backward(torch.tensor(np.asarray(g, np.float64)).to(yt.dtype))
        ref_dx = [
            t.grad.to(torch.float64).numpy() if t.grad is not None else np.zeros(t.shape)
            for t in ts
        ]
    for i, (a, b) in enumerate(zip(ours_dx, ref_dx)):
        ok, why = _close(a, b, half, "vjp")
        if not ok:
            return Result("mismatch", f"vjp of input {i}: {why}")
    return Result("ok")


def _fmt(config):
    return " ".join(f"{k}={v!r}" for k, v in config.items())


def sweep(
    n: int,
    seed: int,
    start: int = 0,
    invalid_share: float = 0.25,
    out=sys.stdout,
    verbose=False,
    progress=0,
    half_share: float = HALF_SHARE,
):
    """Run configs ``start .. start + n - 1`` of ``seed``; returns the counts and mismatches."""
    counts = {"ok": 0, "both_raise": 0, "known": 0, "mismatch": 0, "half": 0}
    mismatches = []
    for index in range(start, start + n):
        case = make_case(seed, index, invalid_share, half_share)
        if verbose:  # before running: a config that kills the process is the last line
            print(f"RUN {_fmt(case.config)}", file=out, flush=True)
        try:
            res = run_case(case)
        except Exception as e:  # noqa: BLE001 - a harness failure is reported, not fatal
            res = Result("mismatch", f"harness error {type(e).__name__}: {e}")
        counts[res.status] += 1
        counts["half"] += "half" in case.config
        done = index - start + 1
        if progress and out is not None and done % progress == 0:
            print(f"progress {done}/{n} {counts}", file=out, flush=True)
        if res.status == "mismatch":
            mismatches.append((case.config, res.detail))
            if out is not None:
                print(f"MISMATCH {res.detail} | {_fmt(case.config)}", file=out, flush=True)
    return counts, mismatches


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of configs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first config index")
    parser.add_argument("--only", type=int, default=None, help="replay this one config index")
    parser.add_argument("--invalid", type=float, default=0.25, help="share of invalid configs")
    parser.add_argument(
        "--half",
        type=float,
        default=HALF_SHARE,
        help="share of the valid configs of HALF_OPS run in bfloat16/float16",
    )
    parser.add_argument("--verbose", action="store_true", help="print every config first")
    parser.add_argument("--progress", type=int, default=0, help="print counts every K configs")
    args = parser.parse_args(argv)
    if args.only is not None:
        args.start, args.n = args.only, 1
        print(_fmt(make_case(args.seed, args.only, args.invalid, args.half).config))
    t0 = time.perf_counter()
    counts, mismatches = sweep(
        args.n,
        args.seed,
        args.start,
        args.invalid,
        verbose=args.verbose,
        progress=args.progress,
        half_share=args.half,
    )
    dt = time.perf_counter() - t0
    print(
        f"configs={args.n} seed={args.seed} start={args.start} ok={counts['ok']} "
        f"both_raise={counts['both_raise']} known={counts['known']} "
        f"mismatches={counts['mismatch']} half_precision={counts['half']} seconds={dt:.1f}"
    )
    return 1 if mismatches else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
