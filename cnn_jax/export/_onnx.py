"""ONNX export: the model's jaxpr, equation by equation, as an ONNX graph.

The model is traced once with a symbolic batch dimension (or a fixed one) and its
jaxpr walked in order: calls (``jit``, custom derivatives) are inlined, equations whose
inputs are all known (the weights, BatchNorm's ``rsqrt(var + eps) * scale``, index
tables) are evaluated at export time, and every other equation becomes a few ONNX
nodes (opset 17). ONNX's Conv and pooling are channels-first, so a convolution is
``Transpose -> Conv -> Transpose`` around an input kept in cnn_jax's NHWC layout
(runtimes fold the transposes); kernels are re-laid-out at export time. An equation
with no ONNX counterpart raises ``NotImplementedError`` naming the jax op and the layer.

Why not ``jax2onnx`` (0.17): it pins ``orbax-checkpoint<0.11.37`` (a downgrade of the
checkpoint library cnn_jax trains with), brings equinox, dm-pix, huggingface-hub and
netron, and failed on ResNet and MobileNetV2 with a symbolic batch (its ``lax.pad``
lowering turns the batch dimension into an int).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.extend import core

from cnn_jax.export._trace import (
    BATCH,
    check_batch,
    check_input_shape,
    inference_function,
    input_spec,
    layer_of,
    layer_paths,
)

OPSET = 17
_IR_VERSION = 8  # the IR version of opset 17: what runtimes of 2022 on accept
_INT64_MAX = np.iinfo(np.int64).max
# Calls whose body is inlined: (primitive, parameter holding the body).
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}


class _Unsupported(Exception):
    """A rule cannot express this equation; the interpreter adds the op and the layer."""


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError(
            "export_onnx: needs the onnx package; pip install 'cnn-jax[export]' "
            "(or pip install onnx)"
        ) from e
    return onnx


def export_onnx(
    model,
    input_shape,
    *,
    batch: int | None = None,
    path: str | None = None,
    metadata: dict | None = None,
):
    """Convert ``model`` (inference: eval mode) to an ONNX model.

    Args:
      model: an ``nnx.Module`` called as ``model(x)`` on ``(N, H, W, C)`` input.
      input_shape: ``(H, W, C)``: the input's size and channels.
      batch: the batch size ``N``; None (default) leaves it symbolic (ONNX ``dim_param``
        ``"N"``): any batch size runs.
      path: where to write the ``.onnx`` file (None: not written).
      metadata: extra ``{str: str}`` entries for the model's ``metadata_props``.

    Returns:
      ``onnx.ModelProto``: one input ``"input"`` (float32 ``(N, H, W, C)``, channels
      last as in cnn_jax) and one output ``"logits"`` (the model's output; a model
      returning several arrays gives ``"output_0"``, ...), opset 17, weights as
      initializers, checked by ``onnx.checker``.

    Raises:
      NotImplementedError: the model uses a jax op with no ONNX conversion here (the
        message names the op and the layer).
      ImportError: the ``onnx`` package is missing (``pip install 'cnn-jax[export]'``).

    Examples:
        >>> proto = export_onnx(LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)), (32, 32, 1))
        >>> [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        ['N', 32, 32, 1]
    """
    op = "export_onnx"
    onnx = _onnx()
    shape = check_input_shape(input_shape, op)
    batch = check_batch(batch, op)
    forward = inference_function(model, op)
    spec = input_spec(shape, batch)
    closed = jax.make_jaxpr(forward)(spec)
    graph = _Graph(onnx, layer_paths(model), type(model).__name__)
    x = graph.add_input("input", spec)
    outputs = graph.run(closed.jaxpr, closed.consts, [x], "")
    for i, (y, var) in enumerate(zip(outputs, closed.jaxpr.outvars)):
        graph.add_output("logits" if len(outputs) == 1 else f"output_{i}", y, var.aval)
    props = {
        "cnn_jax.input_layout": "NHWC",
        "cnn_jax.model": type(model).__name__,
        **(metadata or {}),
    }
    proto = graph.model(props)
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, path)
    return proto


def _static(d) -> bool:
    return isinstance(d, (int, np.integer))


def _linear_in_batch(d) -> tuple[int, int]:
    """``(a, b)`` with ``d == a * N + b`` for a dimension expression in the batch ``N``."""
    try:  # jax has no public evaluation of a symbolic dimension; _evaluate since 0.4.14
        values = [int(d._evaluate({BATCH: n})) for n in (0, 1, 2)]
    except Exception as e:  # noqa: BLE001 - another variable, or not a polynomial
        raise _Unsupported(f"the dimension {d} is not an affine function of the batch") from e
    if values[2] - values[1] != values[1] - values[0]:
        raise _Unsupported(f"the dimension {d} is not an affine function of the batch")
    return values[1] - values[0], values[0]


class _Graph:
    """ONNX nodes and initializers under construction, and the jaxpr interpreter."""

    def __init__(self, onnx, layers: set[str], root: str):
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self.layers, self.root = layers, root
        self.count = 0
        self.scope = ""
        self.batch_value = None  # int64[1]: the input's batch size, made when first needed
        self.input_name = None

    # ------------------------------------------------------------ building blocks

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, dtype=None) -> str:
        array = np.asarray(value, dtype=dtype)
        name = self.fresh("const")
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def name(self, value, dtype=None) -> str:
        """An ONNX tensor name for a graph value or a known array."""
        return value if isinstance(value, str) else self.const(value, dtype)

    def node(self, op_type: str, inputs, outputs: int = 1, **attrs):
        inputs = [self.name(v) for v in inputs]
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        label = layer_of(self.scope, self.layers) or self.root
        self.nodes.append(
            self.helper.make_node(op_type, inputs, names, name=f"{label}/{names[0]}", **attrs)
        )
        return names[0] if outputs == 1 else names

    def dtype(self, dtype) -> int:
        return self.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def batch(self) -> str:
        if self.batch_value is None:
            self.batch_value = self.node("Shape", [self.input_name], start=0, end=1)
        return self.batch_value

    def dim(self, d) -> str | int:
        """A dimension: an int if static, else an int64[1] tensor computed from the batch."""
        if _static(d):
            return int(d)
        a, b = _linear_in_batch(d)
        value = self.batch()
        if a != 1:
            value = self.node("Mul", [value, np.array([a], np.int64)])
        if b != 0:
            value = self.node("Add", [value, np.array([b], np.int64)])
        return value

    def shape(self, dims) -> str:
        """An int64 shape tensor for ``dims`` (ints and batch expressions)."""
        if all(_static(d) for d in dims):
            return self.const(np.array([int(d) for d in dims], np.int64))
        parts = [self.dim(d) for d in dims]
        parts = [np.array([p], np.int64) if isinstance(p, int) else p for p in parts]
        return self.node("Concat", parts, axis=0)

    def reshape(self, x, dims) -> str:
        """Reshape to ``dims``; a single non-static dimension becomes -1."""
        dynamic = [i for i, d in enumerate(dims) if not _static(d)]
        if len(dynamic) == 1:
            target = [int(d) if _static(d) else -1 for d in dims]
            return self.node("Reshape", [x, np.array(target, np.int64)])
        return self.node("Reshape", [x, self.shape(dims)])

    def transpose(self, x, perm):
        perm = [int(p) for p in perm]
        if perm == sorted(perm):
            return x
        if not isinstance(x, str):
            return np.transpose(x, perm)
        return self.node("Transpose", [x], perm=perm)

    # ------------------------------------------------------------ graph ends

    def add_input(self, name: str, spec) -> str:
        dims = [d if _static(d) else BATCH for d in spec.shape]
        self.inputs.append(self.helper.make_tensor_value_info(name, self.dtype(spec.dtype), dims))
        self.input_name = name
        return name

    def add_output(self, name: str, value, aval):
        self.scope = ""
        self.nodes.append(
            self.helper.make_node(
                "Identity", [self.name(value)], [name], name=f"{self.root}/output"
            )
        )
        dims = [int(d) if _static(d) else str(d) for d in aval.shape]
        self.outputs.append(self.helper.make_tensor_value_info(name, self.dtype(aval.dtype), dims))

    def model(self, metadata: dict):
        from cnn_jax import __version__

        graph = self.helper.make_graph(
            self.nodes, self.root, self.inputs, self.outputs, initializer=self.initializers
        )
        proto = self.helper.make_model(
            graph,
            opset_imports=[self.helper.make_opsetid("", OPSET)],
            producer_name="cnn_jax",
            producer_version=__version__,
        )
        proto.ir_version = _IR_VERSION
        self.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
        return proto

    # ------------------------------------------------------------ the interpreter

    def run(self, jaxpr, consts, args, scope: str) -> list:
        env = {}

        def read(v):
            if isinstance(v, core.Literal):
                return np.asarray(v.val, dtype=v.aval.dtype)
            return env[v]

        for var, value in zip(jaxpr.constvars, consts):
            env[var] = value if isinstance(value, str) else np.asarray(value)
        env.update(zip(jaxpr.invars, args))
        for eqn in jaxpr.eqns:
            inputs = [read(v) for v in eqn.invars]
            stack = "/".join(s for s in (scope, str(eqn.source_info.name_stack)) if s)
            self.scope = stack
            outputs = self.equation(eqn, inputs, stack)
            for var, value in zip(eqn.outvars, outputs):
                if not isinstance(var, core.DropVar):
                    env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn, inputs, stack: str) -> list:
        name = eqn.primitive.name
        if name in _CALLS:
            body = eqn.params[_CALLS[name]]
            jaxpr, consts = (body.jaxpr, body.consts) if hasattr(body, "consts") else (body, ())
            return self.run(jaxpr, consts, inputs, stack)
        if name == "platform_index":  # lax.platform_dependent: ONNX takes the default
            # branch (the raw conv, as on GPU/TPU), not the CPU formulation of ops/_lowering
            platforms = eqn.params["platforms"]
            default = platforms.index(None) if None in platforms else 0
            return [np.asarray(default, np.int32)]
        if name == "cond" and not isinstance(inputs[0], str):  # a branch known at export
            branches = eqn.params["branches"]
            branch = branches[int(np.clip(inputs[0], 0, len(branches) - 1))]
            return self.run(branch.jaxpr, branch.consts, inputs[1:], stack)
        if all(not isinstance(v, str) for v in inputs) and all(
            _static(d) for v in eqn.outvars for d in v.aval.shape
        ):
            return _fold(eqn, inputs)
        rule = _RULES.get(name)
        try:
            if rule is None:
                raise _Unsupported("ONNX has no counterpart that this exporter knows")
            out = rule(self, eqn, *inputs)
        except _Unsupported as e:
            layer = layer_of(stack, self.layers)
            where = f"layer {layer!r}" if layer else f"model {self.root}"
            raise NotImplementedError(
                f"export_onnx: jax op {name!r} in {where} cannot be expressed in ONNX opset "
                f"{OPSET}: {e}"
            ) from None
        return out if isinstance(out, list) else [out]


# ---------------------------------------------------------------- export-time evaluation


def _broadcast(x, shape, broadcast_dimensions, **_):
    expanded = [1] * len(shape)
    for i, d in zip(broadcast_dimensions, x.shape):
        expanded[i] = d
    return np.broadcast_to(x.reshape(expanded), shape)


# Equations on known arrays that BatchNorm and the layers' reshapes produce, in numpy:
# through jax, each distinct shape would compile a program (seconds per model).
_NUMPY = {
    **{
        name: (lambda f: lambda *xs, **_: f(*xs))(f)
        for name, f in {
            "add": np.add,
            "sub": np.subtract,
            "mul": np.multiply,
            "max": np.maximum,
            "min": np.minimum,
            "neg": np.negative,
            "sqrt": np.sqrt,
            "exp": np.exp,
            "square": np.square,
            "rsqrt": lambda x: 1 / np.sqrt(x),
        }.items()
    },
    "reshape": lambda x, new_sizes, **_: np.reshape(x, new_sizes),
    "transpose": lambda x, permutation, **_: np.transpose(x, permutation),
    "squeeze": lambda x, dimensions, **_: np.squeeze(x, tuple(dimensions)),
    "convert_element_type": lambda x, new_dtype, **_: x.astype(new_dtype),
    "broadcast_in_dim": _broadcast,
}


def _fold(eqn, inputs) -> list:
    """Evaluate an equation whose inputs are all known: weights, BatchNorm's
    ``rsqrt(var + eps) * scale``, index tables. No node is emitted for it."""
    fn = _NUMPY.get(eqn.primitive.name)
    floating = all(np.issubdtype(v.aval.dtype, np.floating) for v in eqn.outvars)
    if (
        fn is not None
        and floating
        and (eqn.params.get("dimensions") is None or eqn.primitive.name == "squeeze")
    ):
        out = [fn(*inputs, **eqn.params)]
    else:
        out = eqn.primitive.bind(*inputs, **eqn.params)
        out = out if eqn.primitive.multiple_results else [out]
    return [np.asarray(o, dtype=v.aval.dtype) for o, v in zip(out, eqn.outvars)]


# ---------------------------------------------------------------- conversion rules

_RULES = {}


def _rule(*names):
    def register(fn):
        for n in names:
            _RULES[n] = fn
        return fn

    return register


def _simple(onnx_op: str):
    return lambda g, eqn, *xs: g.node(onnx_op, xs)


for _jax_op, _onnx_op in {
    "neg": "Neg",
    "exp": "Exp",
    "log": "Log",
    "tanh": "Tanh",
    "logistic": "Sigmoid",
    "sqrt": "Sqrt",
    "abs": "Abs",
    "sign": "Sign",
    "floor": "Floor",
    "ceil": "Ceil",
    "erf": "Erf",
    "sin": "Sin",
    "cos": "Cos",
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "max": "Max",
    "min": "Min",
    "pow": "Pow",
    "eq": "Equal",
    "lt": "Less",
    "le": "LessOrEqual",
    "gt": "Greater",
    "ge": "GreaterOrEqual",
}.items():
    _RULES[_jax_op] = _simple(_onnx_op)


@_rule("and", "or", "not", "xor")
def _logical(g, eqn, *xs):
    if eqn.outvars[0].aval.dtype != np.bool_:
        raise _Unsupported("bitwise operations on integers are not supported")
    return g.node(eqn.primitive.name.capitalize(), xs)


@_rule("ne")
def _ne(g, eqn, x, y):
    return g.node("Not", [g.node("Equal", [x, y])])


@_rule("rsqrt")
def _rsqrt(g, eqn, x):
    return g.node("Reciprocal", [g.node("Sqrt", [x])])


@_rule("square")
def _square(g, eqn, x):
    return g.node("Mul", [x, x])


@_rule("erfc")
def _erfc(g, eqn, x):
    return g.node("Sub", [np.ones((), eqn.invars[0].aval.dtype), g.node("Erf", [x])])


@_rule("log1p")
def _log1p(g, eqn, x):
    return g.node("Log", [g.node("Add", [x, np.ones((), eqn.invars[0].aval.dtype)])])


@_rule("expm1")
def _expm1(g, eqn, x):
    return g.node("Sub", [g.node("Exp", [x]), np.ones((), eqn.invars[0].aval.dtype)])


@_rule("integer_pow")
def _integer_pow(g, eqn, x):
    y, dtype = eqn.params["y"], eqn.invars[0].aval.dtype
    if y == 2:
        return g.node("Mul", [x, x])
    return g.node("Pow", [x, np.asarray(y, dtype)])


@_rule("clamp")
def _clamp(g, eqn, lo, x, hi):
    return g.node("Max", [g.node("Min", [x, hi]), lo])


@_rule("copy", "copy_p", "optimization_barrier", "sharding_constraint")
def _identity(g, eqn, *xs):
    return list(xs)


@_rule("convert_element_type")
def _convert(g, eqn, x):
    if eqn.invars[0].aval.dtype == eqn.params["new_dtype"]:
        return x
    return g.node("Cast", [x], to=g.dtype(eqn.params["new_dtype"]))


@_rule("select_n")
def _select_n(g, eqn, which, *cases):
    if len(cases) == 1:
        return cases[0]
    if eqn.invars[0].aval.dtype == np.bool_:
        return g.node("Where", [which, cases[1], cases[0]])
    out = cases[0]
    dtype = eqn.invars[0].aval.dtype
    for i, case in enumerate(cases[1:], 1):
        out = g.node("Where", [g.node("Equal", [which, np.asarray(i, dtype)]), case, out])
    return out


@_rule("reduce_sum", "reduce_max", "reduce_min", "reduce_prod")
def _reduce(g, eqn, x):
    axes = [int(a) for a in eqn.params["axes"]]
    op = {
        "reduce_sum": "ReduceSum",
        "reduce_max": "ReduceMax",
        "reduce_min": "ReduceMin",
        "reduce_prod": "ReduceProd",
    }[eqn.primitive.name]
    if op == "ReduceSum":  # axes an input from opset 13, an attribute for the others until 18
        return g.node(op, [x, np.array(axes, np.int64)], keepdims=0)
    return g.node(op, [x], axes=axes, keepdims=0)


@_rule("argmax", "argmin")
def _argmax(g, eqn, x):
    (axis,) = eqn.params["axes"]
    out = g.node(
        "ArgMax" if eqn.primitive.name == "argmax" else "ArgMin", [x], axis=int(axis), keepdims=0
    )
    return g.node("Cast", [out], to=g.dtype(eqn.params["index_dtype"]))


@_rule("cumsum")
def _cumsum(g, eqn, x):
    return g.node(
        "CumSum", [x, np.array(eqn.params["axis"], np.int64)], reverse=int(eqn.params["reverse"])
    )


@_rule("reshape")
def _reshape(g, eqn, x, *dynamic):
    if dynamic or eqn.params.get("dimensions") is not None:
        raise _Unsupported("only plain reshapes (no dimensions, no dynamic shapes)")
    return g.reshape(x, eqn.params["new_sizes"])


@_rule("squeeze")
def _squeeze(g, eqn, x):
    axes = [int(a) for a in eqn.params["dimensions"]]
    return g.node("Squeeze", [x, np.array(axes, np.int64)]) if axes else x


@_rule("expand_dims")
def _expand_dims(g, eqn, x):
    axes = [int(a) for a in eqn.params["dimensions"]]
    return g.node("Unsqueeze", [x, np.array(axes, np.int64)])


@_rule("broadcast_in_dim")
def _broadcast_in_dim(g, eqn, x, *dynamic):
    if dynamic:
        raise _Unsupported("dynamic shapes are not supported")
    shape, dims = eqn.params["shape"], tuple(eqn.params["broadcast_dimensions"])
    in_shape = eqn.invars[0].aval.shape
    new_axes = [i for i in range(len(shape)) if i not in dims]
    if new_axes:
        x = g.node("Unsqueeze", [x, np.array(new_axes, np.int64)])
    expanded = [1] * len(shape)
    for i, d in zip(dims, in_shape):
        expanded[i] = d
    if all(a == b for a, b in zip(expanded, shape)):
        return x
    # Expand broadcasts both ways: a dimension the operand already has stays as it is.
    target = [
        1 if (i in dims and (not _static(d) or d == expanded[i])) else d
        for i, d in enumerate(shape)
    ]
    return g.node("Expand", [x, g.shape(target)])


@_rule("transpose")
def _transpose(g, eqn, x):
    return g.transpose(x, eqn.params["permutation"])


@_rule("concatenate")
def _concatenate(g, eqn, *xs):
    return g.node("Concat", xs, axis=int(eqn.params["dimension"]))


@_rule("stack")
def _stack(g, eqn, *xs):
    axis = np.array([eqn.params["axis"]], np.int64)
    return g.node(
        "Concat", [g.node("Unsqueeze", [x, axis]) for x in xs], axis=int(eqn.params["axis"])
    )


@_rule("split")
def _split(g, eqn, x):
    sizes = np.array(eqn.params["sizes"], np.int64)
    return list(g.node("Split", [x, sizes], outputs=len(sizes), axis=int(eqn.params["axis"])))


def _slice(g, x, in_shape, starts, limits, strides):
    """ONNX Slice over the axes that are not taken whole."""
    axes, begin, end, step = [], [], [], []
    for i, (d, s, e, k) in enumerate(zip(in_shape, starts, limits, strides)):
        whole_end = e == d
        if s == 0 and whole_end and k == 1:
            continue
        if not _static(s) or not (whole_end or _static(e)):
            raise _Unsupported("slice bounds that depend on the batch size")
        axes.append(i)
        begin.append(int(s))
        end.append(_INT64_MAX if whole_end else int(e))
        step.append(int(k))
    if not axes:
        return x
    return g.node(
        "Slice",
        [
            x,
            np.array(begin, np.int64),
            np.array(end, np.int64),
            np.array(axes, np.int64),
            np.array(step, np.int64),
        ],
    )


@_rule("slice")
def _slice_rule(g, eqn, x):
    shape = eqn.invars[0].aval.shape
    strides = eqn.params["strides"] or (1,) * len(shape)
    return _slice(g, x, shape, eqn.params["start_indices"], eqn.params["limit_indices"], strides)


@_rule("dynamic_slice")
def _dynamic_slice(g, eqn, x, *starts):
    shape, sizes = eqn.invars[0].aval.shape, eqn.params["slice_sizes"]
    if any(isinstance(s, str) for s in starts) or not all(map(_static, shape)):
        raise _Unsupported("only start indices known at export time are supported")
    begin = [int(np.clip(int(s), 0, d - k)) for s, d, k in zip(starts, shape, sizes)]
    return _slice(g, x, shape, begin, [b + k for b, k in zip(begin, sizes)], [1] * len(shape))


@_rule("rev")
def _rev(g, eqn, x):
    axes = [int(a) for a in eqn.params["dimensions"]]
    n = len(axes)
    return g.node(
        "Slice",
        [
            x,
            np.full(n, -1, np.int64),
            np.full(n, np.iinfo(np.int64).min, np.int64),
            np.array(axes, np.int64),
            np.full(n, -1, np.int64),
        ],
    )


@_rule("pad")
def _pad(g, eqn, x, value):
    config = eqn.params["padding_config"]
    if any(interior for _, _, interior in config):
        raise _Unsupported("interior (dilating) padding is not supported")
    shape = eqn.invars[0].aval.shape
    # Negative padding crops: a Slice first, then Pad adds the positive part.
    if any(lo < 0 or hi < 0 for lo, hi, _ in config):
        starts = [max(-lo, 0) for lo, _, _ in config]
        limits = [d if hi >= 0 else d + hi for d, (_, hi, _) in zip(shape, config)]
        x = _slice(g, x, shape, starts, limits, [1] * len(shape))
    pads = [max(lo, 0) for lo, _, _ in config] + [max(hi, 0) for _, hi, _ in config]
    if not any(pads):
        return x
    return g.node("Pad", [x, np.array(pads, np.int64), value], mode="constant")


@_rule("gather")
def _gather(g, eqn, x, indices):
    """``jnp.take(x, indices, axis)`` with indices known at export time: ONNX Gather."""
    dn = eqn.params["dimension_numbers"]
    shape, rank = eqn.invars[0].aval.shape, eqn.invars[0].aval.ndim
    if (
        isinstance(indices, str)
        or len(dn.start_index_map) != 1
        or tuple(dn.collapsed_slice_dims) != tuple(dn.start_index_map)
        or dn.operand_batching_dims
    ):
        raise _Unsupported("only take-along-one-axis gathers with known indices")
    (axis,) = dn.start_index_map
    batch = indices.shape[:-1]
    sizes = eqn.params["slice_sizes"]
    expect_offsets = tuple(range(axis)) + tuple(range(axis + len(batch), rank - 1 + len(batch)))
    if (
        indices.shape[-1] != 1
        or tuple(dn.offset_dims) != expect_offsets
        or sizes[axis] != 1
        or any(s != d for i, (s, d) in enumerate(zip(sizes, shape)) if i != axis)
        or not _static(shape[axis])
    ):
        raise _Unsupported("only take-along-one-axis gathers with known indices")
    index = indices[..., 0].astype(np.int64)
    if np.any((index < 0) | (index >= shape[axis])):
        if "FILL" in str(eqn.params["mode"]):
            raise _Unsupported("out-of-range indices with mode fill")
        index = np.clip(index, 0, shape[axis] - 1)
    return g.node("Gather", [x, index], axis=int(axis))


@_rule("dot_general")
def _dot_general(g, eqn, lhs, rhs):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    out_dtype = eqn.outvars[0].aval.dtype
    lhs_aval, rhs_aval = eqn.invars[0].aval, eqn.invars[1].aval
    if lhs_aval.dtype != out_dtype:
        lhs = g.node("Cast", [lhs], to=g.dtype(out_dtype))
    if rhs_aval.dtype != out_dtype:
        rhs = g.node("Cast", [rhs], to=g.dtype(out_dtype))
    if not lb and rhs_aval.ndim == 2 and tuple(lc) == (lhs_aval.ndim - 1,) and len(rc) == 1:
        # x @ W, the Linear layers: W laid out (in, out) at export time when it is known.
        if tuple(rc) == (1,):
            rhs = g.transpose(rhs, (1, 0))
        return g.node("MatMul", [lhs, rhs])
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs_sub = [next(letters) for _ in range(lhs_aval.ndim)]
    rhs_sub = [None] * rhs_aval.ndim
    for i, j in zip(list(lc) + list(lb), list(rc) + list(rb)):
        rhs_sub[j] = lhs_sub[i]
    rhs_sub = [s or next(letters) for s in rhs_sub]
    out = (
        [lhs_sub[i] for i in lb]
        + [s for i, s in enumerate(lhs_sub) if i not in lc and i not in lb]
        + [s for j, s in enumerate(rhs_sub) if j not in rc and j not in rb]
    )
    equation = f"{''.join(lhs_sub)},{''.join(rhs_sub)}->{''.join(out)}"
    return g.node("Einsum", [lhs, rhs], equation=equation)


@_rule("conv_general_dilated")
def _conv(g, eqn, x, kernel):
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    n = len(lhs_spec) - 2
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise _Unsupported(
            "input dilation (a transposed conv as lhs_dilation) and "
            "batch_group_count are not supported"
        )
    out_dtype = eqn.outvars[0].aval.dtype
    if eqn.invars[0].aval.dtype != out_dtype:
        x = g.node("Cast", [x], to=g.dtype(out_dtype))
    if eqn.invars[1].aval.dtype != out_dtype:
        kernel = g.node("Cast", [kernel], to=g.dtype(out_dtype))
    x = g.transpose(x, lhs_spec)  # -> (N, C, *spatial)
    kernel = g.transpose(kernel, rhs_spec)  # -> (O, I // groups, *k)
    padding = [tuple(int(v) for v in pair) for pair in p["padding"]]
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        shape = [eqn.invars[0].aval.shape[i] for i in lhs_spec]
        starts = [0, 0] + [max(-lo, 0) for lo, _ in padding]
        limits = list(shape[:2]) + [
            d if hi >= 0 else d + hi for d, (_, hi) in zip(shape[2:], padding)
        ]
        x = _slice(g, x, shape, starts, limits, [1] * (n + 2))
        padding = [(max(lo, 0), max(hi, 0)) for lo, hi in padding]
    k = [int(d) for d in eqn.invars[1].aval.shape]
    y = g.node(
        "Conv",
        [x, kernel],
        kernel_shape=[k[i] for i in rhs_spec[2:]],
        strides=[int(s) for s in p["window_strides"]],
        dilations=[int(d) for d in p["rhs_dilation"]],
        pads=[lo for lo, _ in padding] + [hi for _, hi in padding],
        group=int(p["feature_group_count"]),
    )
    return g.transpose(y, np.argsort(out_spec))


@_rule("reduce_window_max", "reduce_window_sum")
def _reduce_window(g, eqn, x):
    p = eqn.params
    shape = eqn.invars[0].aval.shape
    window, strides = p["window_dimensions"], p["window_strides"]
    padding, dilation = p["padding"], p["window_dilation"]
    if any(d != 1 for d in p["base_dilation"]):
        raise _Unsupported("base dilation is not supported")
    plain = [
        i
        for i in range(len(shape))
        if window[i] == 1 and strides[i] == 1 and tuple(padding[i]) == (0, 0) and dilation[i] == 1
    ]
    spatial = [i for i in range(len(shape)) if i not in plain]
    if not spatial:
        return x
    if len(spatial) > 3 or not all(_static(shape[i]) for i in spatial):
        raise _Unsupported("pooling windows over more than 3 axes or over the batch")
    is_max = eqn.primitive.name == "reduce_window_max"
    if not is_max and any(dilation[i] != 1 for i in spatial):
        raise _Unsupported(f"dilated sum pooling needs opset 19 (this is {OPSET})")
    # (plain axes merged, 1, *spatial): ONNX pooling is (N, C, *spatial).
    perm = plain + spatial
    y = g.transpose(x, perm)
    y = g.reshape(
        y,
        [
            -1
            if not all(_static(shape[i]) for i in plain)
            else int(np.prod([shape[i] for i in plain], dtype=np.int64)),
            1,
        ]
        + [shape[i] for i in spatial],
    )
    attrs = dict(
        kernel_shape=[int(window[i]) for i in spatial],
        strides=[int(strides[i]) for i in spatial],
        pads=[int(padding[i][0]) for i in spatial] + [int(padding[i][1]) for i in spatial],
    )
    if is_max:
        y = g.node("MaxPool", [y], dilations=[int(dilation[i]) for i in spatial], **attrs)
    else:
        y = g.node("AveragePool", [y], count_include_pad=1, **attrs)
        size = int(np.prod([window[i] for i in spatial]))
        y = g.node("Mul", [y, np.asarray(size, eqn.outvars[0].aval.dtype)])
    out_shape = eqn.outvars[0].aval.shape
    y = g.reshape(y, [out_shape[i] for i in perm])
    return g.transpose(y, np.argsort(perm))
