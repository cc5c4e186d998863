"""The ``ops`` suite: convolutions of real networks, cnn_jax against its peers.

Cases (channels_last; batch small on a CPU, 64 on a GPU):

* ResNet-50 training convolutions (the DeepBench set): the 7x7/2 stem, the 1x1 and
  3x3 layers of each stage at 56, 28, 14 and 7 pixels, the strided 3x3;
* depthwise 3x3 of MobileNetV2 (stride 1 and 2) and 5x5 of EfficientNet-B0;
* a 3-D 3x3x3 convolution (video / volumetric networks).

Peers: ``lax.conv_general_dilated`` (what cnn_jax lowers to on a GPU or TPU; on a CPU
``cnn_jax/ops/_lowering.py`` computes depthwise and 1x1 convs otherwise), ``flax.nnx.Conv``,
``equinox.nn.Conv`` (if installed), PyTorch (channels_last; ``torch.compile`` too on
a GPU), and for depthwise cases on a CPU the shifted multiply-add prototype of
``benchmarks/depthwise_prototype.py``. Forward (``fwd``) and forward + both
gradients (``fwd+bwd``), float32 (and bfloat16 on a GPU).

Run: ``python -m benchmarks --suite ops`` (``python benchmarks/ops.py`` forwards there).
"""

from __future__ import annotations

if __name__ == "__main__":  # `python benchmarks/ops.py [--section S] [--quick]`, as before
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks._cli import legacy_script

    sys.exit(legacy_script("ops", sys.argv[1:]))

import dataclasses
import functools
import math

from benchmarks import _peers as P
from benchmarks._suite import Peers, run_cases

PASSES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class ConvCase:
    what: str  # the layer it stands for
    n: int
    spatial: tuple[int, ...]
    cin: int
    cout: int
    k: int
    s: int
    depthwise: bool = False

    @property
    def dims(self) -> int:
        return len(self.spatial)

    @property
    def pad(self) -> int:
        return self.k // 2

    @property
    def out(self) -> tuple[int, ...]:
        return tuple((h + 2 * self.pad - self.k) // self.s + 1 for h in self.spatial)

    @property
    def groups(self) -> int:
        return self.cin if self.depthwise else 1

    def name(self, dtype: str) -> str:
        kind = "dwconv" if self.depthwise else "conv"
        size = "x".join(map(str, (self.n, *self.spatial, self.cin)))
        return f"{kind}{self.dims}d_{size}_k{self.k}s{self.s}_o{self.cout}_{_short(dtype)}"

    def forward_flops(self) -> int:
        return (
            2
            * self.n
            * math.prod(self.out)
            * self.cout
            * self.k**self.dims
            * self.cin
            // self.groups
        )


def _short(dtype: str) -> str:
    return {"float32": "f32", "bfloat16": "bf16"}[dtype]


# (what, H, C_in, C_out, k, stride): ResNet-50 training convolutions (torchvision v1.5:
# stride on the 3x3), one of each kind per stage.
RESNET50 = [
    ("ResNet-50 stem 7x7/2", 224, 3, 64, 7, 2),
    ("ResNet-50 layer1 3x3", 56, 64, 64, 3, 1),
    ("ResNet-50 layer1 1x1 expand", 56, 64, 256, 1, 1),
    ("ResNet-50 layer1 1x1 reduce", 56, 256, 64, 1, 1),
    ("ResNet-50 layer2 3x3/2", 56, 128, 128, 3, 2),
    ("ResNet-50 layer2 3x3", 28, 128, 128, 3, 1),
    ("ResNet-50 layer3 3x3", 14, 256, 256, 3, 1),
    ("ResNet-50 layer3 1x1 reduce", 14, 1024, 256, 1, 1),
    ("ResNet-50 layer4 3x3", 7, 512, 512, 3, 1),
]
# (what, H, C, k, stride): depthwise layers of MobileNetV2 (3x3) and EfficientNet-B0
# (5x5): both strides, both kernels, large and small maps.
DEPTHWISE = [
    ("MobileNetV2 dw3x3 56px", 56, 144, 3, 1),
    ("MobileNetV2 dw3x3/2 56px", 56, 144, 3, 2),
    ("MobileNetV2 dw3x3 14px", 14, 384, 3, 1),
    ("EfficientNet-B0 dw5x5/2 56px", 56, 144, 5, 2),
    ("EfficientNet-B0 dw5x5 28px", 28, 240, 5, 1),
    ("EfficientNet-B0 dw5x5 7px", 7, 1152, 5, 1),
]


def cases(plan: str, quick: bool) -> list[ConvCase]:
    if quick:  # one of each kind, tiny, so that every code path runs in seconds
        return [
            ConvCase("ResNet-50 3x3 (tiny)", 2, (8, 8), 16, 16, 3, 1),
            ConvCase("MobileNetV2 dw3x3/2 (tiny)", 2, (8, 8), 16, 16, 3, 2, True),
            ConvCase("3-D 3x3x3 (tiny)", 1, (4, 8, 8), 8, 8, 3, 1),
        ]
    gpu = plan == "gpu"
    n_resnet, n_dw = (64, 64) if gpu else (8, 4)
    out = [ConvCase(w, n_resnet, (h, h), ci, co, k, s) for w, h, ci, co, k, s in RESNET50]
    out += [ConvCase(w, n_dw, (h, h), c, c, k, s, True) for w, h, c, k, s in DEPTHWISE]
    out.append(
        ConvCase(
            "3-D 3x3x3 (video/volume)",
            8 if gpu else 2,
            (16, 56, 56) if gpu else (8, 28, 28),
            64 if gpu else 32,
            64 if gpu else 32,
            3,
            1,
        )
    )
    return out


def run(ctx) -> list[dict]:
    return run_cases(ctx, "ops", cases(ctx.plan, ctx.quick), _run_case)


def _run_case(ctx, c: ConvCase, dtype: str) -> list[dict]:
    import jax.numpy as jnp
    from flax import nnx
    from jax import lax

    import cnn_jax as cj

    d = c.dims
    x = P.normal((c.n, *c.spatial, c.cin), dtype, seed=0)
    # HWIO kernel; depthwise: (*k, 1, C), as cj.depthwise_conv takes it.
    kshape = (c.k,) * d + (c.cin // c.groups, c.cout)
    w = P.normal(kshape, dtype, seed=1, scale=1 / math.sqrt(c.k**d * c.cin / c.groups))
    pads = ((c.pad, c.pad),) * d
    spatial = "DHW"[-d:]
    dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")

    if c.depthwise:
        ours = functools.partial(cj.depthwise_conv, stride=c.s, padding=c.pad)
    else:
        ours = functools.partial(cj.conv, stride=c.s, padding=c.pad)
    raw = functools.partial(
        lax.conv_general_dilated,
        window_strides=(c.s,) * d,
        padding=pads,
        dimension_numbers=dn,
        feature_group_count=c.groups,
    )
    peers = Peers(PASSES)
    peers.add("cnn_jax", ours, (x, w))
    peers.add("lax", raw, (x, w))
    layer = nnx.Conv(
        c.cin,
        c.cout,
        (c.k,) * d,
        strides=c.s,
        padding=pads,
        feature_group_count=c.groups,
        use_bias=False,
        dtype=x.dtype,
        param_dtype=x.dtype,
        kernel_init=lambda *_: w,
        rngs=nnx.Rngs(0),
    )
    f, state = P.flax_layer_fn(layer)
    peers.add("flax", f, (state, x))
    if ctx.equinox is not None:
        eqx = ctx.equinox
        conv = P.equinox_layer(
            eqx.nn.Conv,
            d,
            c.cin,
            c.cout,
            c.k,
            stride=c.s,
            padding=c.pad,
            groups=c.groups,
            use_bias=False,
            dtype=x.dtype,
            weight=jnp.transpose(w, (d + 1, d, *range(d))),
        )
        peers.add_equinox(conv, x)
    if c.depthwise and ctx.plan == "cpu" and d == 2:
        from benchmarks.depthwise_prototype import depthwise_conv

        peers.add("prototype", functools.partial(depthwise_conv, stride=c.s, padding=c.pad), (x, w))
    if ctx.torch is not None:
        torch = ctx.torch
        tx = P.torch_tensor(ctx, x, perm=P.nhwc_to_nchw(d + 2), channels_last=True, grad=True)
        tw = P.torch_tensor(ctx, w, perm=(d + 1, d, *range(d)), grad=True)
        conv_fn = {2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[d]

        def tfn(a, b):
            return conv_fn(a, b, stride=c.s, padding=c.pad, groups=c.groups)

        peers.add_torch(ctx, tfn, (tx, tw))

    base = {"suite": "ops", "case": c.name(dtype), "what": c.what, "dtype": dtype}
    return peers.time(ctx, base, forward_flops=c.forward_flops())
