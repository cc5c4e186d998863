"""The ``transpose`` suite: transposed convolutions of decoders, cnn_jax against peers.

Cases: U-Net's 2x2/2 up-convolution, DCGAN's 4x4/2 (padding 1) generator layer, a
3x3/2 "same" decoder layer (padding 1, output_padding 1). ``lax`` is
``lax.conv_transpose`` (XLA's ``lhs_dilation`` form, which autodiff of a strided
conv also emits); ``flax`` is ``flax.nnx.ConvTranspose`` given the same padding and
``transpose_kernel=True`` (so it computes the same values); ``equinox`` is
``equinox.nn.ConvTranspose``; PyTorch's ``conv_transpose2d`` runs channels_last.
cnn_jax decomposes the op into stride phases (``conv_transpose_strategies.py``).

Run: ``python -m benchmarks --suite transpose``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from benchmarks import _peers as P
from benchmarks._suite import Peers, run_cases

PASSES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class TransposeCase:
    what: str
    n: int
    hw: int
    cin: int
    cout: int
    k: int
    s: int
    p: int = 0
    op: int = 0

    @property
    def out(self) -> int:
        return (self.hw - 1) * self.s - 2 * self.p + self.k + self.op

    def name(self, dtype: str) -> str:
        short = {"float32": "f32", "bfloat16": "bf16"}[dtype]
        return (
            f"conv_transpose2d_{self.n}x{self.hw}x{self.hw}x{self.cin}_k{self.k}s{self.s}"
            f"p{self.p}op{self.op}_o{self.cout}_{short}"
        )

    def forward_flops(self) -> int:
        """FLOPs of the equivalent (gradient-of-conv) computation: every input pixel
        meets every kernel tap once; the inserted zeros are not counted."""
        return 2 * self.n * self.hw * self.hw * self.cin * self.cout * self.k * self.k


def cases(plan: str, quick: bool) -> list[TransposeCase]:
    if quick:
        return [TransposeCase("DCGAN 4x4/2 (tiny)", 2, 8, 16, 8, 4, 2, 1)]
    n = 64 if plan == "gpu" else 4
    return [
        TransposeCase("U-Net up-conv 2x2/2 (28->56 px)", n, 28, 256, 128, 2, 2),
        TransposeCase("DCGAN generator 4x4/2 (16->32 px)", n, 16, 256, 128, 4, 2, 1),
        TransposeCase("decoder 3x3/2 p1 op1 (28->56 px)", n, 28, 128, 64, 3, 2, 1, 1),
    ]


def run(ctx) -> list[dict]:
    return run_cases(ctx, "transpose", cases(ctx.plan, ctx.quick), _run_case)


def _run_case(ctx, c: TransposeCase, dtype: str) -> list[dict]:
    import jax.numpy as jnp
    from flax import nnx
    from jax import lax

    import cnn_jax as cj

    x = P.normal((c.n, c.hw, c.hw, c.cin), dtype, seed=0)
    w = P.normal((c.k, c.k, c.cin, c.cout), dtype, seed=1, scale=1 / math.sqrt(c.k * c.k * c.cin))
    peers = Peers(PASSES)
    peers.add(
        "cnn_jax",
        functools.partial(cj.conv_transpose, stride=c.s, padding=c.p, output_padding=c.op),
        (x, w),
    )
    # lax's padding is of the dilated input: PyTorch's (k - 1 - p, k - 1 - p + op).
    lax_pads = ((c.k - 1 - c.p, c.k - 1 - c.p + c.op),) * 2
    peers.add(
        "lax",
        functools.partial(
            lax.conv_transpose,
            strides=(c.s, c.s),
            padding=lax_pads,
            dimension_numbers=("NHWC", "HWOI", "NHWC"),
            transpose_kernel=True,
        ),
        (x, w),
    )
    layer = nnx.ConvTranspose(
        c.cin,
        c.cout,
        (c.k, c.k),
        strides=(c.s, c.s),
        padding=lax_pads,
        transpose_kernel=True,
        use_bias=False,
        dtype=x.dtype,
        param_dtype=x.dtype,
        kernel_init=lambda *_: jnp.swapaxes(w, 2, 3),
        rngs=nnx.Rngs(0),
    )
    f, state = P.flax_layer_fn(layer)
    peers.add("flax", f, (state, x))
    if ctx.equinox is not None:
        eqx = ctx.equinox
        conv = P.equinox_layer(
            eqx.nn.ConvTranspose,
            2,
            c.cin,
            c.cout,
            c.k,
            stride=c.s,
            padding=c.p,
            output_padding=c.op,
            use_bias=False,
            dtype=x.dtype,
            weight=jnp.transpose(w, (3, 2, 0, 1))[:, :, ::-1, ::-1],
        )
        peers.add_equinox(conv, x)
    if ctx.torch is not None:
        F = ctx.torch.nn.functional
        tx = P.torch_tensor(ctx, x, perm=(0, 3, 1, 2), channels_last=True, grad=True)
        tw = P.torch_tensor(ctx, w, perm=(2, 3, 0, 1), grad=True)  # (C_in, C_out, k, k)

        def tfn(a, b):
            return F.conv_transpose2d(a, b, stride=c.s, padding=c.p, output_padding=c.op)

        peers.add_torch(ctx, tfn, (tx, tw))

    base = {"suite": "transpose", "case": c.name(dtype), "what": c.what, "dtype": dtype}
    return peers.time(ctx, base, forward_flops=c.forward_flops())
