"""The ``pool`` suite: the pools of ResNet (3x3/2 max) and VGG (2x2/2 max), and average
pools of the same windows, cnn_jax against its peers.

``lax`` is the pool JAX users write by hand (``lax.reduce_window`` with ``lax.max`` and
``-inf``, or ``lax.add`` and ``0``) differentiated by JAX itself (XLA's
``select_and_scatter`` for max); ``flax`` is ``flax.nnx.max_pool``/``avg_pool`` and
``equinox`` ``equinox.nn.MaxPool2d``/``AvgPool2d``, both on ``reduce_window`` too;
PyTorch runs channels_last. cnn_jax's max pool has its own VJP (no scatter).

Run: ``python -m benchmarks --suite pool``.
"""

from __future__ import annotations

import dataclasses
import functools

from benchmarks import _peers as P
from benchmarks._suite import Peers, run_cases

PASSES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class PoolCase:
    what: str
    kind: str  # "max" or "avg"
    shape: tuple[int, int, int, int]  # N, H, W, C
    k: int
    s: int
    p: int

    def name(self, dtype: str) -> str:
        size = "x".join(map(str, self.shape))
        short = {"float32": "f32", "bfloat16": "bf16"}[dtype]
        return f"{self.kind}_pool2d_{size}_k{self.k}s{self.s}p{self.p}_{short}"


def cases(plan: str, quick: bool) -> list[PoolCase]:
    if quick:
        return [
            PoolCase("ResNet max 3x3/2 (tiny)", "max", (2, 16, 16, 8), 3, 2, 1),
            PoolCase("avg 2x2/2 (tiny)", "avg", (2, 16, 16, 8), 2, 2, 0),
        ]
    n = 64 if plan == "gpu" else 8
    resnet, vgg = (n, 112, 112, 64), (n // 2, 224, 224, 64)
    return [
        PoolCase("ResNet stem max 3x3/2", "max", resnet, 3, 2, 1),
        PoolCase("VGG block1 max 2x2/2", "max", vgg, 2, 2, 0),
        PoolCase("avg 3x3/2 (ResNet-D shortcut)", "avg", resnet, 3, 2, 1),
        PoolCase("avg 2x2/2", "avg", vgg, 2, 2, 0),
    ]


def lax_pool(kind, k, s, p):
    """The plain ``lax.reduce_window`` pool (count_include_pad average)."""
    import jax.numpy as jnp
    from jax import lax

    pads = ((0, 0), (p, p), (p, p), (0, 0))
    dims, strides = (1, k, k, 1), (1, s, s, 1)
    if kind == "max":
        return lambda x: lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pads)
    return lambda x: lax.reduce_window(x, 0.0, lax.add, dims, strides, pads) / (k * k)


def run(ctx) -> list[dict]:
    return run_cases(ctx, "pool", cases(ctx.plan, ctx.quick), _run_case)


def _run_case(ctx, c: PoolCase, dtype: str) -> list[dict]:
    from flax import nnx

    import cnn_jax as cj

    x = P.normal(c.shape, dtype, seed=0)
    peers = Peers(PASSES)
    op = cj.max_pool if c.kind == "max" else cj.avg_pool
    peers.add("cnn_jax", functools.partial(op, window=c.k, stride=c.s, padding=c.p), (x,))
    peers.add("lax", lax_pool(c.kind, c.k, c.s, c.p), (x,))
    flax_op = nnx.max_pool if c.kind == "max" else nnx.avg_pool
    peers.add(
        "flax",
        lambda x: flax_op(x, (c.k, c.k), strides=(c.s, c.s), padding=((c.p, c.p), (c.p, c.p))),
        (x,),
    )
    if ctx.equinox is not None:
        eqx = ctx.equinox
        layer = (eqx.nn.MaxPool2d if c.kind == "max" else eqx.nn.AvgPool2d)(
            c.k, stride=c.s, padding=c.p
        )
        peers.add_equinox(layer, x)
    if ctx.torch is not None:
        F = ctx.torch.nn.functional
        tx = P.torch_tensor(ctx, x, perm=(0, 3, 1, 2), channels_last=True, grad=True)
        tf = F.max_pool2d if c.kind == "max" else F.avg_pool2d

        def tfn(a):
            return tf(a, c.k, c.s, c.p)

        peers.add_torch(ctx, tfn, (tx,))

    base = {"suite": "pool", "case": c.name(dtype), "what": c.what, "dtype": dtype}
    return peers.time(ctx, base)
