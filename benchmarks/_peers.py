"""The run's context and the peers: how each framework is set up, fed and timed.

Every suite builds its cases from these helpers, so that all of them treat the
frameworks alike: JAX functions are jitted and differentiated with ``jax.vjp``
against a random cotangent (so XLA cannot simplify the backward pass); PyTorch
runs channels_last (``torch.channels_last`` / ``channels_last_3d``), eagerly and, on
a GPU plan, under ``torch.compile``; Equinox layers are vmapped over the batch (they
are unbatched and channels-first, as Equinox is written).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks._harness import Impl, jax_wait


@dataclasses.dataclass
class Context:
    """Everything a suite needs to know about this run."""

    plan: str  # "cpu" or "gpu": picks sizes, dtypes and peers
    quick: bool
    repeats: int
    min_sample_s: float
    max_case_s: float
    dtypes: tuple[str, ...]
    torch_compile: str  # "none", "models" (whole networks only) or "all"
    deadline: float  # time.monotonic() after which cases are skipped
    torch: object = None  # the module, or None when PyTorch is absent
    equinox: object = None
    torch_device: str = "cpu"
    torch_threads: tuple[int, ...] = (1,)
    records: dict = dataclasses.field(default_factory=dict)  # suite -> facts that are not rows
    partial: list = dataclasses.field(default_factory=list)  # this suite's rows so far
    log: Callable[[str], None] = print

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def cpu_torch(self) -> bool:
        return self.torch is not None and self.torch_device == "cpu"


def make_context(
    *,
    plan: str,
    quick: bool,
    repeats: int | None,
    budget_s: float | None,
    use_equinox: bool = True,
    torch_compile: str | None = None,
    log=print,
) -> Context:
    try:
        import torch
    except ImportError:
        torch = None
    eqx = None
    if use_equinox:
        try:
            import equinox as eqx
        except Exception:  # noqa: BLE001 - optional extra: absent or broken, skipped
            eqx = None
    gpu = plan == "gpu"
    cuda = torch is not None and torch.cuda.is_available()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ctx = Context(
        plan=plan,
        quick=quick,
        repeats=repeats or (3 if quick else (10 if gpu else 7)),
        min_sample_s=0.002 if quick else (0.01 if gpu else 0.03),
        max_case_s=0.5 if quick else 3.0,
        # bfloat16 first on a GPU: it is the dtype networks train in there, and a run
        # cut short by its time budget should have those rows.
        dtypes=("bfloat16", "float32") if gpu else ("float32",),
        torch_compile=torch_compile or ("models" if gpu and cuda else "none"),
        deadline=time.monotonic() + (budget_s if budget_s else 1e9),
        torch=torch,
        equinox=eqx,
        torch_device="cuda" if (gpu and cuda) else "cpu",
        torch_threads=tuple(sorted({1, cores or 1})) if not (gpu and cuda) else (0,),
        log=log,
    )
    return ctx


# ----------------------------------------------------------------------- arrays


def jax_dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def normal(shape, dtype: str, seed: int = 0, scale: float = 1.0):
    import jax.numpy as jnp

    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale
    return jnp.asarray(x, jax_dtype(dtype))


def torch_tensor(ctx: Context, array, *, perm=None, channels_last=False, grad=False):
    """A PyTorch tensor of a JAX array: axes permuted by ``perm``, on the context's
    device, in the array's dtype, optionally in PyTorch's channels_last memory format."""
    torch = ctx.torch
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[str(array.dtype)]
    t = torch.from_numpy(np.array(array, np.float32))  # a writable copy
    if perm is not None:
        t = t.permute(*perm)
    t = t.to(device=ctx.torch_device, dtype=dtype)
    if channels_last:
        fmt = torch.channels_last if t.ndim == 4 else torch.channels_last_3d
        t = t.contiguous(memory_format=fmt)
    else:
        t = t.contiguous()
    return t.requires_grad_(grad)


def nhwc_to_nchw(ndim: int):
    """The permutation of a channels_last array into PyTorch's (N, C, *spatial)."""
    return (0, ndim - 1, *range(1, ndim - 1))


def nchw_to_nhwc(ndim: int):
    return (0, *range(2, ndim), 1)


def rel_err(reference, other) -> float:
    """max |a - b| / max |a| in float32 (a trust check, not a parity test)."""
    a = np.asarray(reference, np.float32)
    b = np.asarray(other, np.float32)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-30))


# ----------------------------------------------------------------------- JAX impls


def jax_pass_impls(name: str, f, args, *, passes, seed=1, info=None):
    """``{pass: Impl}`` for a JAX function: "fwd" jits ``f(*args)``; "fwd+bwd" jits the
    forward pass and the VJP of every argument against a fixed random cotangent."""
    import jax
    import jax.numpy as jnp

    out = {}
    if "fwd" in passes:
        fwd = jax.jit(f)
        out["fwd"] = Impl(name, lambda: fwd(*args), jax_wait, info=dict(info or {}))
    if "fwd+bwd" in passes:
        shape = jax.eval_shape(f, *args)
        ct = jnp.asarray(np.random.default_rng(seed).standard_normal(shape.shape), shape.dtype)

        @jax.jit
        def fwd_bwd(args, ct):
            y, pull = jax.vjp(f, *args)
            return y, pull(ct)

        out["fwd+bwd"] = Impl(name, lambda: fwd_bwd(args, ct), jax_wait, info=dict(info or {}))
    return out


def flax_layer_fn(layer):
    """``(f, state)``: the nnx layer as a pure function of its state and the input."""
    from flax import nnx

    graphdef, state = nnx.split(layer)
    return (lambda st, x: nnx.merge(graphdef, st)(x)), state


def equinox_layer(cls, *args, weight, **kw):
    """An Equinox layer with ``weight`` as its weight, built without running its random
    initialiser (op by op, that compiles a program per op: seconds per layer)."""
    import jax

    eqx = sys.modules["equinox"]
    abstract = eqx.filter_eval_shape(cls, *args, **kw, key=jax.random.key(0))
    return eqx.tree_at(lambda m: m.weight, abstract, weight)


def equinox_layer_fn(layer):
    """``(f, params)``: an unbatched channels-first Equinox layer, vmapped over N."""
    import jax

    eqx = sys.modules["equinox"]
    params, static = eqx.partition(layer, eqx.is_array)
    return (lambda p, x: jax.vmap(eqx.combine(p, static))(x)), params


# ----------------------------------------------------------------------- PyTorch impls


def _torch_wait(ctx):
    if ctx.torch_device == "cuda":
        sync = ctx.torch.cuda.synchronize
        return lambda _: sync()
    return lambda _: None


def torch_pass_impls(ctx: Context, fn, tensors, *, passes, cotangent=None):
    """``{pass: [Impl, ...]}`` of a PyTorch function of ``tensors``.

    Eager on CPU at each thread count of ``ctx.torch_threads`` (named ``torch@N``,
    folded into the faster ``torch`` afterwards), eager on a GPU; and when
    ``ctx.torch_compile == "all"``, ``torch_compile``: ``torch.compile`` of the same
    function, the backward pass compiled by AOTAutograd. (Not by default: for one
    convolution or pool Inductor calls the same cuDNN/ATen kernel as eager mode and
    costs seconds of compilation per case; whole networks are where it can fuse.) ``cotangent`` is the output gradient
    (random, as the JAX side's).
    """
    torch = ctx.torch
    wait = _torch_wait(ctx)
    if cotangent is None and "fwd+bwd" in passes:
        with torch.no_grad():
            y = fn(*tensors)
        g = torch.Generator(device="cpu").manual_seed(1)
        cotangent = torch.randn(y.shape, generator=g).to(y.device, y.dtype)
        if y.ndim >= 4:
            cotangent = cotangent.contiguous(
                memory_format=torch.channels_last if y.ndim == 4 else torch.channels_last_3d
            )
    variants = []  # (name, callable, before)
    if ctx.torch_device == "cpu":
        for n in ctx.torch_threads:
            variants.append((f"torch@{n}", fn, (lambda n=n: torch.set_num_threads(n))))
    else:
        variants.append(("torch", fn, None))
    if ctx.torch_compile == "all":
        torch._dynamo.reset()  # a fresh cache per case: no recompile limit is reached
        variants.append(("torch_compile", torch.compile(fn), all_threads(ctx)))
    out = {p: [] for p in passes}
    for name, f, before in variants:
        if "fwd" in passes:

            def fwd(f=f):
                with torch.no_grad():
                    return f(*tensors)

            out["fwd"].append(Impl(name, fwd, wait, before=before))
        if "fwd+bwd" in passes:

            def fwd_bwd(f=f):
                for t in tensors:
                    t.grad = None
                y = f(*tensors)
                y.backward(cotangent)
                return y

            out["fwd+bwd"].append(Impl(name, fwd_bwd, wait, before=before))
    return out


def all_threads(ctx: Context):
    """``before`` of a PyTorch impl on CPU that runs at every core (None on a GPU)."""
    if not ctx.cpu_torch:
        return None
    return lambda: ctx.torch.set_num_threads(max(ctx.torch_threads))


def torch_output(ctx: Context, fn, tensors):
    """The forward output of a PyTorch function, as a channels_last numpy array."""
    torch = ctx.torch
    with torch.no_grad():
        y = fn(*tensors)
    return y.float().permute(*nchw_to_nhwc(y.ndim)).cpu().numpy()


def set_torch_threads(ctx: Context):
    """Back to every core after a suite changed PyTorch's thread count."""
    if ctx.cpu_torch:
        ctx.torch.set_num_threads(max(ctx.torch_threads))


def set_precision(ctx: Context, tf32: bool):
    """The same matmul/conv precision for both frameworks (float32 unless ``tf32``).

    JAX: ``jax_default_matmul_precision`` ("highest" = true float32, "tensorfloat32");
    PyTorch: ``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32``. On a CPU neither changes anything.
    """
    import jax

    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
    if ctx.torch is not None:
        ctx.torch.backends.cuda.matmul.allow_tf32 = tf32
        ctx.torch.backends.cudnn.allow_tf32 = tf32
        # cuDNN picks its algorithms by timing them, as XLA's autotuner does for JAX.
        ctx.torch.backends.cudnn.benchmark = True
        ctx.torch.set_float32_matmul_precision("high" if tf32 else "highest")
