"""Argument checks shared by every tier (ops, nn layers, models): one place for each rule.

Everything here runs on plain Python values before JAX sees anything, and returns
hashable values (tuples, ints, lower-cased strings), so results can be static under
``jax.jit``. Every error follows one template, ``"<op>: <argument> must <rule>, got
<value>"``, where ``op`` is the public function or class that was called.

One argument order everywhere: a checker of one argument takes
``(value, <what the rule needs>, name, op)``: the value first, then the numbers or
choices the rule depends on, then the argument's name, ``op`` last
(``ntuple(stride, n, "stride", op)``, ``check_choice(mode, MODES, "mode", op)``).

No jax import: ``cnn_jax.nn`` and ``cnn_jax.models`` validate their constructor
arguments with these same functions, and the ops add their array checks
(``cnn_jax.ops._args``) on top.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Sequence

PaddingLike = int | Sequence[int] | Sequence[tuple[int, int]] | str
Pads = tuple[tuple[int, int], ...]

LAYOUTS = ("channels_last", "channels_first")
# The string paddings of convolution; pooling and unfold/fold take all but "causal"
# (1-D convolution only); transposed convolution and ``pad`` only "valid".
PADDING_STRINGS = ("valid", "same", "full", "causal")
POOL_PADDING_STRINGS = ("valid", "same", "full")
# How a convolution pads (``torch.nn.Conv*d(padding_mode=...)``).
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# How ``upsample`` interpolates ("linear" is bi- or trilinear by rank).
UPSAMPLE_METHODS = ("nearest", "linear")

# Size bound, checked before XLA sees a shape. XLA indexes with int32 in places and
# aborts the process (SIGABRT) on some larger values, and a huge padding or output
# size otherwise reaches the allocator (RESOURCE_EXHAUSTED). So every int argument,
# every spatial extent of a padded input or an output, and the spatial volume (the
# product of those extents) of each such array must be at most MAX_SIZE. Batch and
# channel counts come from the caller's own arrays and are not bounded here.
MAX_SIZE = 2**31 - 1


# --------------------------------------------------------------------------- scalars


def _as_int(value, name: str, op: str) -> int:
    """``operator.index`` so numpy ints pass and floats/bools fail with our message."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int or a tuple of ints, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a tuple of ints, got {value!r}") from None
    if out > MAX_SIZE:
        raise ValueError(f"{op}: {name} must be <= 2**31 - 1 in every dim, got {value!r}")
    return int(out)


def ntuple(value, n: int, name: str, op: str, *, min_value: int | None = 1) -> tuple[int, ...]:
    """Normalise an int-or-sequence argument to a tuple of ``n`` ints.

    Args:
      value: an int (same for every spatial dim) or a sequence of ``n`` ints.
      n: number of spatial dims.
      name: the argument's name, for error messages.
      op: the public op's name, for error messages.
      min_value: smallest allowed entry, or None for no bound.

    Returns:
      A tuple of ``n`` Python ints.
    """
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{op}: {name} must be an int or a tuple of {n} ints, got {value!r}")
    if isinstance(value, Sequence) or hasattr(value, "__len__") and not hasattr(value, "__index__"):
        items = tuple(value)
        if len(items) != n:
            raise ValueError(
                f"{op}: {name} must be an int or a tuple of {n} ints "
                f"(one per spatial dim), got {value!r} of length {len(items)}"
            )
        out = tuple(_as_int(v, name, op) for v in items)
    else:
        out = (_as_int(value, name, op),) * n
    if min_value is not None and any(v < min_value for v in out):
        raise ValueError(f"{op}: {name} must be >= {min_value} in every dim, got {value!r}")
    return out


def check_int(value, name: str, op: str, *, min_value: int | None = 1) -> int:
    """Validate a scalar int argument (channel counts, groups, factors) and return it.

    ``operator.index`` so numpy ints pass and floats/bools fail with a ``TypeError``;
    a value below ``min_value`` raises a ``ValueError``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {value!r}") from None
    if min_value is not None and out < min_value:
        raise ValueError(f"{op}: {name} must be >= {min_value}, got {value!r}")
    if out > MAX_SIZE:
        raise ValueError(f"{op}: {name} must be <= 2**31 - 1, got {value!r}")
    return int(out)


def check_bool(value, name: str, op: str) -> bool:
    """A flag that must be a real bool: Python's ``bool`` or numpy's ``bool_``.

    Anything else (``1``, ``"no"``, ``None``, an array) raises ``TypeError``: a truthy
    string would otherwise silently mean True. Returns a Python ``bool`` (static under
    ``jax.jit``).
    """
    if isinstance(value, bool):
        return value
    numpy = sys.modules.get("numpy")  # not imported: value cannot be a numpy bool
    if numpy is not None and isinstance(value, numpy.bool_):
        return bool(value)
    raise TypeError(f"{op}: {name} must be a bool, got {value!r}")


def check_layout(layout, op: str) -> str:
    """Validate ``layout`` and return it."""
    if layout not in LAYOUTS:
        raise ValueError(f"{op}: layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def check_choice(value, choices: Sequence[str], name: str, op: str) -> str:
    """Validate a case-insensitive string option and return it lower-cased."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{op}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value.lower()


# --------------------------------------------------------------------------- padding


def is_pairs(padding) -> bool:
    """True when ``padding`` is a sequence of ``(low, high)`` pairs."""
    return (
        isinstance(padding, Sequence)
        and not isinstance(padding, str)
        and len(padding) > 0
        and all(isinstance(p, Sequence) and not isinstance(p, str) for p in padding)
    )


def same_padding(size: int, eff: int, stride: int) -> tuple[int, int]:
    """``"same"`` along one dim: output ``ceil(size / stride)``, the odd pixel high
    (TF/XLA). ``eff`` is the dilated window ``dilation * (k - 1) + 1``. With stride 1
    the low side is ``(eff - 1) // 2`` whatever the size, which is what a layer reports
    before it sees an input (:func:`declared_padding`)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _padding_forms(n: int, allowed_strings) -> str:
    return f"an int, a tuple of {n} ints, {n} (low, high) pairs or one of {tuple(allowed_strings)}"


def _string_padding(padding: str, n, op, name, input_shape, eff, stride, allowed_strings):
    mode = padding.lower()
    if mode not in allowed_strings:
        raise ValueError(
            f"{op}: {name} must be {_padding_forms(n, allowed_strings)}, got {padding!r}"
        )
    if mode == "valid":
        return ((0, 0),) * n
    if eff is None:
        raise ValueError(f"{op}: {name}={padding!r} needs a kernel size")
    if mode == "full":
        return tuple((e - 1, e - 1) for e in eff)
    if mode == "causal":
        if n != 1:
            raise ValueError(
                f"{op}: {name}='causal' is only defined for 1-D convolution, got {n} spatial dims"
            )
        return ((eff[0] - 1, 0),)
    if input_shape is None:
        raise ValueError(f"{op}: {name}='same' needs the input shape")
    return tuple(same_padding(size, e, s) for size, e, s in zip(input_shape, eff, stride))


def _explicit_padding(padding, n, op, name, allowed_strings) -> Pads:
    if is_pairs(padding):
        if len(padding) != n:
            raise ValueError(
                f"{op}: {name} as (low, high) pairs must have one pair per spatial dim "
                f"({n}), got {padding!r}"
            )
        pads = []
        for pair in padding:
            if len(pair) != 2:
                raise ValueError(f"{op}: {name} pairs must be (low, high), got {padding!r}")
            pads.append((_as_int(pair[0], name, op), _as_int(pair[1], name, op)))
        return tuple(pads)
    try:
        sym = ntuple(padding, n, name, op, min_value=None)
    except TypeError:
        raise TypeError(
            f"{op}: {name} must be {_padding_forms(n, allowed_strings)}, got {padding!r}"
        ) from None
    return tuple((p, p) for p in sym)


def resolve_padding(
    padding: PaddingLike,
    n: int,
    op: str,
    *,
    input_shape: Sequence[int] | None = None,
    kernel_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
    allowed_strings: Sequence[str] = PADDING_STRINGS,
    name: str = "padding",
) -> Pads:
    """Resolve every accepted padding form to explicit ``((low, high), ...)``.

    Forms: an int or a tuple of ``n`` ints (symmetric, PyTorch style); ``n``
    ``(low, high)`` pairs (lax style); ``"valid"`` (none); ``"same"`` (output
    ``ceil(in / stride)``, the extra pad high, TF/XLA; needs ``input_shape``);
    ``"full"`` (``dilation * (k - 1)`` both sides); ``"causal"`` (that much on the low
    side only, 1-D only). Strings are case-insensitive; negative amounts are refused.

    Args:
      padding: the padding argument as the user gave it.
      n: number of spatial dims.
      op: the public op's name, for error messages.
      input_shape: spatial input shape, needed for ``"same"``.
      kernel_size, stride, dilation: per-dim tuples (default 1s), needed for strings.
      allowed_strings: the string forms this op accepts.
      name: the argument's name, for error messages.

    Returns:
      A tuple of ``n`` ``(low, high)`` int pairs.
    """
    if isinstance(padding, str):
        ones = (1,) * n
        d = tuple(dilation) if dilation is not None else ones
        eff = (
            None
            if kernel_size is None
            else tuple(dd * (k - 1) + 1 for k, dd in zip(kernel_size, d))
        )
        s = tuple(stride) if stride is not None else ones
        return _string_padding(padding, n, op, name, input_shape, eff, s, allowed_strings)
    pads = _explicit_padding(padding, n, op, name, allowed_strings)
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise ValueError(f"{op}: {name} must be non-negative, got {padding!r}")
    return pads


def declared_padding(
    padding, n: int, op: str, *, kernel_size, stride, dilation, allowed_strings=PADDING_STRINGS
):
    """A layer's padding, checked before any input is seen: ``(stored, low)``.

    ``stored`` is what the op is called with: a lower-cased string, a tuple of
    ``n`` ints, or ``(low, high)`` pairs. ``low`` is the low side per dim, for the
    receptive field; for ``"same"`` it is the stride-1 amount ``(eff - 1) // 2``
    (:func:`same_padding`), exact for stride 1 (with stride > 1 it depends on the
    input size, which the op resolves).
    """
    if isinstance(padding, str) and padding.lower() == "same" and "same" in allowed_strings:
        eff = (dd * (k - 1) + 1 for k, dd in zip(kernel_size, dilation))
        return "same", tuple(same_padding(1, e, 1)[0] for e in eff)
    pads = resolve_padding(
        padding,
        n,
        op,
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        allowed_strings=allowed_strings,
    )
    low = tuple(lo for lo, _ in pads)
    if isinstance(padding, str):
        return padding.lower(), low
    return (pads if is_pairs(padding) else low), low


def check_pool_padding(padding, pads: Pads, window: Sequence[int], op: str) -> None:
    """PyTorch's pooling rule: int or tuple padding is at most ``window // 2`` per dim
    (on the undilated window). Pairs and strings are checked by the op instead (every
    window must keep an input element)."""
    if isinstance(padding, str) or is_pairs(padding):
        return
    if any(lo > k // 2 for (lo, _), k in zip(pads, window)):
        raise ValueError(
            f"{op}: padding must be at most half the window (window // 2 = "
            f"{tuple(k // 2 for k in window)}) in every dim, got padding={padding!r} "
            f"for window={tuple(window)}"
        )


def check_output_padding(output_padding, stride, dilation, op: str) -> None:
    """PyTorch's rule: each ``output_padding`` must be < its stride or its dilation."""
    for o, s, d in zip(output_padding, stride, dilation):
        if o >= s and o >= d:
            raise ValueError(
                f"{op}: output_padding must be smaller than stride or dilation in every "
                f"dim, got output_padding={output_padding}, stride={stride}, dilation={dilation}"
            )
