"""``cnn_jax.summary``: a per-layer table of shapes, parameters, FLOPs and receptive fields.

The model is traced once with ``jax.eval_shape`` (no real compute, no memory for
activations) on a copy of its state in which every layer is replaced, in its parent,
by a recorder that calls it (``cnn_jax.nn.intercept_calls``); no class is patched, so
other models, and other threads tracing them, are untouched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import nn, ops
from cnn_jax.nn import Conv, ConvTranspose, DepthwiseConv, SeparableConv


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One module call.

    Attributes:
      name: PyTorch-style dotted path (``layer1.0.conv1``).
      type: the module's class name.
      depth: nesting level (0 for the model's direct children).
      output_shape: shape of the output for one example (batch axis dropped), or a
        tuple of shapes for several outputs.
      params: parameters (``nnx.Param`` entries) of the module and its children.
      flops: floating-point operations for one example, the module's children
        included: ``2 x`` the multiply-accumulates of conv, transposed-conv and
        linear layers (bias adds, normalisation, activations and pooling are not
        counted).
      receptive_field: ``(size, jump)`` of one output unit on the input along the
        model's main path up to this layer (per spatial dim), or None where the
        output has no spatial axes or the layer is off the main path.
    """

    name: str
    type: str
    depth: int
    output_shape: tuple
    params: int
    flops: int
    receptive_field: tuple | None


@dataclasses.dataclass(frozen=True)
class Summary:
    """The result of :func:`summary`; ``print(result)`` shows the table.

    Attributes:
      rows: :class:`SummaryRow` per module call, in call order (parents first).
      input_shape: the traced input shape, batch axis included.
      total_params: all ``nnx.Param`` entries of the model.
      total_flops: FLOPs of one example (sum over the top-level rows).
      output_shape: the model's output shape for one example.
    """

    rows: tuple
    input_shape: tuple
    total_params: int
    total_flops: int
    output_shape: tuple

    def __getitem__(self, name: str) -> SummaryRow:
        """The row of the module called ``name`` (first call)."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def __str__(self) -> str:
        header = ("Layer (type)", "Output shape", "Params", "FLOPs", "RF size, jump")
        lines = []
        for row in self.rows:
            rf = (
                "-"
                if row.receptive_field is None
                else (f"{_compact(row.receptive_field[0])}, {_compact(row.receptive_field[1])}")
            )
            lines.append(
                (
                    "  " * row.depth + f"{row.name} ({row.type})",
                    str(row.output_shape),
                    f"{row.params:,}",
                    _human(row.flops),
                    rf,
                )
            )
        widths = [
            max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
            for i, h in enumerate(header)
        ]

        def fmt(cols):
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))
            )

        rule = "=" * len(fmt(header))
        out = [
            rule,
            fmt(header),
            rule,
            *map(fmt, lines),
            rule,
            f"Input shape: {self.input_shape}   Output shape (per example): {self.output_shape}",
            f"Total params: {self.total_params:,}",
            f"Total FLOPs (per example, 2 x multiply-adds): {self.total_flops:,} "
            f"({_human(self.total_flops)})",
            rule,
        ]
        return "\n".join(out)


def _compact(value):
    if isinstance(value, tuple) and len(set(value)) == 1:
        return str(value[0])
    return str(value)


def _human(flops: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.2f}{unit}"
    return str(flops)


def _param_count(module) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _flops(module, inputs, output) -> int:
    """2 x multiply-accumulates of one example through ``module``."""
    if not inputs or not hasattr(output, "shape"):
        return 0
    x = inputs[0]
    if not hasattr(x, "shape"):
        return 0
    batch = output.shape[0] if output.ndim > 1 else 1
    if isinstance(module, SeparableConv):
        dw = math.prod(module.depthwise_kernel.shape)
        pw = math.prod(module.pointwise_kernel.shape)
        out_sp = output.size // batch // module.out_features
        return 2 * out_sp * (dw + pw)
    if isinstance(module, (Conv, DepthwiseConv, nnx.Conv)):
        # Each output element: prod(k) * C_in / groups multiply-adds, i.e. kernel.size / C_out.
        kernel = module.kernel.shape
        per_out = math.prod(kernel) // module.out_features
        return 2 * (output.size // batch) * per_out
    if isinstance(module, ConvTranspose):
        # Each input element is scattered through C_out / groups * prod(k) weights.
        kernel = module.kernel.shape
        per_in = math.prod(kernel) // module.in_features
        return 2 * (x.size // batch) * per_in
    if isinstance(module, nnx.Linear):
        return 2 * (output.size // batch) * module.in_features
    return 0


def _shape_of(out):
    """Shape of one example: the batch axis dropped."""
    if hasattr(out, "shape"):
        return tuple(out.shape[1:])
    if isinstance(out, (tuple, list)):
        return tuple(_shape_of(o) for o in out)
    return ()


def summary(model: nnx.Module, input_shape: Sequence[int], *, dtype=jnp.float32) -> Summary:
    """Trace ``model`` once and tabulate every layer call.

    For each sub-module call (in call order, containers before their children):
    output shape, parameters, FLOPs (``2 x`` multiply-accumulates of conv and linear
    layers, per example; for a conv ``2 * prod(out_spatial) * C_out * C_in / groups *
    prod(k)``) and the receptive field ``(size, jump)`` of the main path up to that
    layer. The model runs under ``jax.eval_shape`` on a copy of its state, so nothing
    is computed and the model (BatchNorm statistics, RNG counters) is left unchanged.

    Args:
      model: an ``nnx.Module`` (e.g. from :mod:`cnn_jax.models`).
      input_shape: shape of one example without the batch axis, e.g. ``(32, 32, 1)``
        for a channels_last image; a batch of one is traced.
      dtype: input dtype.

    Returns:
      A :class:`Summary` (``print`` it for the table; ``result["conv1"].flops`` for a
      row).

    >>> s = summary(LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)), (32, 32, 1))
    >>> s["conv1"].output_shape, s.total_params
    ((28, 28, 6), 61706)
    """
    op = "summary"
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{op}: model must be an nnx.Module, got {type(model).__name__}")
    if isinstance(input_shape, (int, str)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"{op}: input_shape must be a tuple of ints, got {input_shape!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape):
        raise ValueError(f"{op}: input_shape must hold positive ints, got {input_shape!r}")
    full_shape = (1, *input_shape)
    graphdef, state = nnx.split(model)
    rows: list[dict] = []

    def trace(state, x):
        copy = nnx.merge(graphdef, state)
        main = None
        if hasattr(copy, "main_path"):
            main = {id(m) for m in nn.main_path(copy)}
        # Parameters are counted first: once intercepted, a parent holds wrappers.
        params = {id(m): _param_count(m) for _, m in nn.named_modules(copy)}
        nn.intercept_calls(copy, _Recorder(rows, main, params).wrap)
        return copy(x)

    out = jax.eval_shape(trace, state, jax.ShapeDtypeStruct(full_shape, dtype))
    total_flops = sum(r["flops"] for r in rows if r["depth"] == 0)
    return Summary(
        rows=tuple(
            SummaryRow(**{f.name: r[f.name] for f in dataclasses.fields(SummaryRow)}) for r in rows
        ),
        input_shape=full_shape,
        total_params=_param_count(model),
        total_flops=total_flops,
        output_shape=_shape_of(out),
    )


class _Recorder:
    """Records one row per layer call while the model is traced.

    ``main`` holds the ids of the main path's layers (None: every layer with a
    ``receptive_field_spec`` is on it). The receptive field of a row is the one of the
    main-path layers called so far; a side branch (a shortcut projection), a container
    of only side-branch layers, or a layer that resizes outside the ``(kernel,
    stride)`` recursion has none.
    """

    def __init__(self, rows: list, main: set | None, params: dict):
        self.rows, self.main, self.params = rows, main, params
        self.stack: list[dict] = []
        self.path_specs: list = []

    def wrap(self, name: str, module):
        def call(*args, **kwargs):
            return self.record(name, module, args, kwargs)

        return call

    def record(self, name, module, args, kwargs):
        row = dict(
            name=name,
            type=type(module).__name__,
            depth=len(self.stack),
            params=self.params[id(module)],
            flops=0,
            off_main=False,
            main_seen=False,
            children=0,
        )
        if self.stack:
            self.stack[-1]["children"] += 1
        self.rows.append(row)
        self.stack.append(row)
        try:
            out = module(*args, **kwargs)
        finally:
            self.stack.pop()
        spec = getattr(module, "receptive_field_spec", None)
        if spec is not None:
            if self.main is None or id(module) in self.main:
                self.path_specs.append(spec)
                row["main_seen"] = True
            else:  # a side branch (e.g. a shortcut projection)
                row["off_main"] = True
        row["flops"] += _flops(module, args, out)
        row["output_shape"] = _shape_of(out)
        row["receptive_field"] = self.field(row, spec, args, out)
        if self.stack:
            parent = self.stack[-1]
            parent["flops"] += row["flops"]
            parent["off_main"] |= row["off_main"]
            parent["main_seen"] |= row["main_seen"]
        return out

    def field(self, row, spec, args, out):
        """``(size, jump)`` of the main path so far, or None (see the class docstring)."""
        spatial = hasattr(out, "ndim") and out.ndim > 2
        side = not row["main_seen"] and any(
            r["off_main"] and not r["main_seen"] for r in (*self.stack, row)
        )
        x = args[0] if args else None
        resizes = (
            spec is None
            and not row["children"]
            and hasattr(x, "shape")
            and spatial
            and tuple(x.shape[1:-1]) != tuple(out.shape[1:-1])
        )
        if not spatial or side or resizes:
            return None
        if self.path_specs:
            rf = ops.receptive_field(self.path_specs)
            return (rf.size, rf.jump)
        return (1, 1)
