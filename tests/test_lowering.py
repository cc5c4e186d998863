"""The per-platform conv lowering (``ops/_lowering.py``): CPU formulations and GPU/TPU.

Oracles: ``lax.conv_general_dilated`` itself (its values, its VJP and its JVP, in
float64), central finite differences for forward-mode AD, and, for the GPU and TPU
lowerings, the program that raw lax gives (``jax.export`` for ``cuda`` / ``tpu`` on this
CPU machine: nothing there may differ but the platform switch's plumbing).
"""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export, lax

import cnn_jax as cj
from cnn_jax import models
from cnn_jax.ops import _conv as conv_module
from cnn_jax.ops import _lowering

SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _dn(n, layout):
    sp = SPATIAL[n]
    if layout == "channels_last":
        return (f"N{sp}C", f"{sp}IO", f"N{sp}C")
    return (f"NC{sp}", f"OI{sp}", f"NC{sp}")


def _resolve(padding, n, k, s, d, in_sp):
    """Explicit ``(lo, hi)`` pads of the conv docstring's padding forms, by hand."""
    if padding == "same":
        out = []
        for i, kk, ss, dd in zip(in_sp, k, s, d):
            total = max((-(-i // ss) - 1) * ss + dd * (kk - 1) + 1 - i, 0)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if padding == "full":
        return tuple((dd * (kk - 1),) * 2 for kk, dd in zip(k, d))
    if padding == "causal":
        return ((d[0] * (k[0] - 1), 0),)
    if padding == "valid":
        return ((0, 0),) * n
    if isinstance(padding, int):
        return ((padding, padding),) * n
    return tuple(padding)


# (spatial, C, multiplier m, kernel, stride, dilation, padding, layout, bias)
DEPTHWISE = [
    ((9,), 3, 1, (3,), (2,), (1,), ((1, 2),), "channels_last", False),
    ((10,), 2, 2, (4,), (3,), (2,), "same", "channels_first", True),
    ((8,), 3, 1, (3,), (1,), (2,), "causal", "channels_last", True),
    ((7, 6), 4, 1, (3, 3), (1, 1), (1, 1), 1, "channels_last", True),
    ((7, 6), 3, 2, (3, 2), (2, 1), (1, 2), ((2, 0), (1, 1)), "channels_first", False),
    ((8, 8), 2, 3, (5, 5), (2, 2), (1, 1), "same", "channels_last", False),
    ((6, 7), 3, 1, (3, 3), (3, 2), (2, 1), "full", "channels_last", False),
    ((9, 5), 2, 1, (2, 3), (2, 2), (1, 1), "valid", "channels_first", True),
    ((5, 6, 4), 2, 1, (3, 3, 3), (1, 1, 1), (1, 1, 1), 1, "channels_last", True),
    (
        (5, 6, 7),
        2,
        2,
        (3, 2, 3),
        (2, 1, 2),
        (1, 2, 1),
        ((1, 0), (0, 1), (1, 1)),
        "channels_first",
        False,
    ),
]


def _depthwise_case(rng, cfg):
    sp, c, m, k, s, d, padding, layout, with_bias = cfg
    n = len(sp)
    x_shape = (2, *sp, c) if layout == "channels_last" else (2, c, *sp)
    w_shape = (*k, 1, c * m) if layout == "channels_last" else (c * m, 1, *k)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(c * m) if with_bias else None
    pads = _resolve(padding, n, k, s, d, sp)

    def ours(x, w, b):
        return cj.depthwise_conv(x, w, b, stride=s, padding=padding, dilation=d, layout=layout)

    def raw(x, w, b):
        y = lax.conv_general_dilated(
            x, w, s, pads, rhs_dilation=d, dimension_numbers=_dn(n, layout), feature_group_count=c
        )
        if b is None:
            return y
        shape = [1] * y.ndim
        shape[-1 if layout == "channels_last" else 1] = c * m
        return y + b.reshape(shape)

    return x, w, b, ours, raw


def _all_modes(f, x, w, b, ct, tx, tw):
    """Values, the VJP on ``ct`` and the JVP along ``(tx, tw)``, in one jit."""

    @jax.jit
    def run(x, w, b, ct, tx, tw):
        y, vjp = jax.vjp(lambda x, w: f(x, w, b), x, w)
        _, jvp = jax.jvp(lambda x, w: f(x, w, b), (x, w), (tx, tw))
        return y, *vjp(ct), jvp

    return run(x, w, b, ct, tx, tw)


@pytest.mark.parametrize(
    "cfg", DEPTHWISE, ids=[f"{len(c[0])}d-m{c[2]}-{c[7]}-{i}" for i, c in enumerate(DEPTHWISE)]
)
def test_depthwise_formulation_equals_raw_lax_values_and_both_ad_modes(rng, cfg):
    with jax.enable_x64(True):
        x, w, b, ours, raw = _depthwise_case(rng, cfg)
        y_ref = raw(x, w, b)
        ct = rng.standard_normal(y_ref.shape)
        tx, tw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
        # The CPU program of cj.depthwise_conv has no convolution: the formulation runs.
        text = jax.jit(ours).lower(x, w, b).as_text()
        assert "stablehlo.convolution" not in text
        got = _all_modes(ours, x, w, b, ct, tx, tw)
        ref = _all_modes(raw, x, w, b, ct, tx, tw)
    for a, r, what in zip(got, ref, ("y", "dx", "dw", "jvp")):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(r), rtol=1e-12, atol=1e-12, err_msg=what
        )


def test_depthwise_padding_modes_and_unbatched_input(rng):
    # Reflect padding is applied before the formulation: equal to raw lax of np.pad.
    with jax.enable_x64(True):
        x = rng.standard_normal((6, 7, 3))  # unbatched, channels_last
        w = rng.standard_normal((3, 3, 1, 6))
        y = cj.depthwise_conv(x, w, stride=2, padding=1, padding_mode="reflect")
        xp = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="reflect")
        ref = lax.conv_general_dilated(
            xp[None],
            w,
            (2, 2),
            "VALID",
            dimension_numbers=_dn(2, "channels_last"),
            feature_group_count=3,
        )[0]
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-12, atol=1e-12)


def test_low_precision_depthwise_accumulates_in_float32(rng):
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 1, 4)).astype(np.float32)
    ref = lax.conv_general_dilated(
        x,
        w,
        (1, 1),
        ((1, 1),) * 2,
        dimension_numbers=_dn(2, "channels_last"),
        feature_group_count=4,
    )
    y = cj.depthwise_conv(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), padding=1)
    assert y.dtype == jnp.bfloat16
    # bfloat16 inputs (8 bits of mantissa) and a bfloat16 output: one rounding of the
    # float32 sum, plus the inputs' own rounding.
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), rtol=0.05, atol=0.1)


# --------------------------------------------------------------------------- 1x1 and im2col


@pytest.mark.parametrize("form", ["dot", "im2col"])
def test_other_cpu_formulations_equal_raw_lax(rng, form):
    if form == "dot":  # a 1x1 conv, stride 1, no padding: one dot_general
        x_shape, w_shape, pads = (2, 5, 4, 6), (1, 1, 6, 7), ((0, 0), (0, 0))
    else:  # a 2x2 output: patches @ kernel
        x_shape, w_shape, pads = (2, 3, 3, 4), (3, 3, 4, 5), ((1, 0), (0, 1))
    with jax.enable_x64(True):
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        ours = lambda x, w, b: cj.conv(x, w, b, padding=pads)  # noqa: E731
        raw = lambda x, w, b: (
            lax.conv_general_dilated(  # noqa: E731
                x, w, (1, 1), pads, dimension_numbers=_dn(2, "channels_last")
            )
            + b.reshape(1, 1, 1, -1)
        )
        b = rng.standard_normal(w_shape[-1])
        text = jax.jit(ours).lower(x, w, b).as_text()
        assert "stablehlo.convolution" not in text and "stablehlo.dot_general" in text
        y_ref = raw(x, w, b)
        ct = rng.standard_normal(y_ref.shape)
        tx, tw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
        got = _all_modes(ours, x, w, b, ct, tx, tw)
        ref = _all_modes(raw, x, w, b, ct, tx, tw)
    for a, r in zip(got, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-12, atol=1e-12)


def test_the_rule():
    rule = _lowering.cpu_formulation
    no_pad = ((0, 0), (0, 0))
    # Depthwise, any multiplier, either layout; groups < C is a grouped conv: lax.
    assert (
        rule((4, 8, 8, 16), (3, 3, 1, 32), (2, 2), no_pad, (1, 1), 16, "channels_last", (3, 3))
        == "depthwise"
    )
    assert (
        rule((4, 16, 8, 8), (16, 1, 5, 5), (1, 1), no_pad, (1, 1), 16, "channels_first", (4, 4))
        == "depthwise"
    )
    assert (
        rule((4, 8, 8, 16), (3, 3, 2, 16), (1, 1), no_pad, (1, 1), 8, "channels_last", (6, 6))
        == "lax"
    )
    # More taps than the bound (a 9x9 depthwise kernel): lax.
    assert (
        rule((4, 16, 16, 8), (9, 9, 1, 8), (1, 1), no_pad, (1, 1), 8, "channels_last", (8, 8))
        == "lax"
    )
    # 1x1: only stride 1, unpadded, undilated, channels_last.
    assert (
        rule((4, 8, 8, 16), (1, 1, 16, 32), (1, 1), no_pad, (1, 1), 1, "channels_last", (8, 8))
        == "dot"
    )
    assert (
        rule((4, 8, 8, 16), (1, 1, 16, 32), (2, 2), no_pad, (1, 1), 1, "channels_last", (4, 4))
        == "lax"
    )
    assert (
        rule((4, 16, 8, 8), (32, 16, 1, 1), (1, 1), no_pad, (1, 1), 1, "channels_first", (8, 8))
        == "lax"
    )
    # An ordinary 3x3 conv: lax (and then no platform switch at all).
    assert (
        rule(
            (4, 8, 8, 16), (3, 3, 16, 32), (1, 1), ((1, 1),) * 2, (1, 1), 1, "channels_last", (8, 8)
        )
        == "lax"
    )
    assert (
        "stablehlo.case"
        not in jax.jit(functools.partial(cj.conv, padding=1))
        .lower(jnp.ones((4, 8, 8, 16)), jnp.ones((3, 3, 16, 32)))
        .as_text()
    )


# --------------------------------------------------------------------------- forward mode


def test_forward_mode_ad_through_conv_depthwise_and_separable(rng):
    """jax.jacfwd of each op equals jax.jacfwd of raw lax; jax.jvp equals a central
    finite difference (float64)."""
    with jax.enable_x64(True):
        x = rng.standard_normal((1, 5, 5, 2))
        dw = rng.standard_normal((3, 3, 1, 4))  # multiplier 2
        pw = rng.standard_normal((1, 1, 4, 3))
        k3 = rng.standard_normal((3, 3, 2, 3))
        dn = _dn(2, "channels_last")
        pads = ((1, 1), (1, 1))
        cases = {
            "conv": (
                lambda x, w: cj.conv(x, w, stride=2, padding=1),
                lambda x, w: lax.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=dn),
                k3,
            ),
            "conv_1x1": (
                lambda x, w: cj.conv(x, w),
                lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dn),
                rng.standard_normal((1, 1, 2, 3)),
            ),
            "depthwise_conv": (
                lambda x, w: cj.depthwise_conv(x, w, stride=2, padding=1),
                lambda x, w: lax.conv_general_dilated(
                    x, w, (2, 2), pads, dimension_numbers=dn, feature_group_count=2
                ),
                dw,
            ),
            "separable_conv": (
                lambda x, w: cj.separable_conv(x, w, pw, padding=1),
                lambda x, w: lax.conv_general_dilated(
                    lax.conv_general_dilated(
                        x, w, (1, 1), pads, dimension_numbers=dn, feature_group_count=2
                    ),
                    pw,
                    (1, 1),
                    "VALID",
                    dimension_numbers=dn,
                ),
                dw,
            ),
        }
        for name, (ours, raw, w) in cases.items():
            for argnum in (0, 1):
                got = jax.jacfwd(ours, argnum)(x, w)
                ref = jax.jacfwd(raw, argnum)(x, w)
                np.testing.assert_allclose(
                    got, ref, rtol=1e-12, atol=1e-12, err_msg=f"{name} d/d{argnum}"
                )
            tx, tw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
            _, tangent = jax.jvp(ours, (x, w), (tx, tw))
            eps = 1e-6
            fd = (ours(x + eps * tx, w + eps * tw) - ours(x - eps * tx, w - eps * tw)) / (2 * eps)
            np.testing.assert_allclose(tangent, fd, rtol=1e-6, atol=1e-7, err_msg=name)


def test_vmap_of_the_depthwise_gradient(rng):
    # Per-example gradients (vmap of grad) go through the formulation's batching.
    x = jnp.asarray(rng.standard_normal((3, 6, 6, 2)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 1, 2)), jnp.float32)

    def loss(w, xi, conv):
        return jnp.sum(conv(xi[None], w) ** 2)

    ours = functools.partial(cj.depthwise_conv, padding=1, stride=2)
    raw = functools.partial(
        lax.conv_general_dilated,
        window_strides=(2, 2),
        padding=((1, 1), (1, 1)),
        dimension_numbers=_dn(2, "channels_last"),
        feature_group_count=2,
    )
    got = jax.vmap(jax.grad(loss), (None, 0, None))(w, x, ours)
    ref = jax.vmap(jax.grad(loss), (None, 0, None))(w, x, raw)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- GPU / TPU


def _program(f, args, platform):
    """The ops of ``f``'s StableHLO for ``platform``: the convolutions' full text (operand
    names and locations stripped) and a count of every other op, the platform switch's
    plumbing (``case``, ``constant``, ``return``) left out."""
    text = export.export(jax.jit(f), platforms=(platform,))(*args).mlir_module()
    convs, others = [], collections.Counter()
    for line in text.splitlines():
        m = re.search(r"stablehlo\.(\w+)", line)
        if not m:
            continue
        if m.group(1) == "convolution":
            line = re.sub(r"%[\w#]+", "%", line)
            convs.append(re.sub(r"loc\(.*?\)\s*$", "", line).strip())
        elif m.group(1) not in ("case", "constant", "return"):
            others[m.group(1)] += 1
    return sorted(convs), others


def _raw_everywhere(monkeypatch):
    """Make every op lower as before this layer: ``convolve`` is the raw conv."""

    def raw(x, kernel, s, pads, d, groups, layout, precision=None, preferred_element_type=None):
        return _lowering._raw(
            x,
            kernel,
            s=tuple(s),
            pads=tuple(pads),
            d=tuple(d),
            groups=groups,
            layout=layout,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )

    monkeypatch.setattr(_lowering, "convolve", raw)
    monkeypatch.setattr(conv_module, "convolve", raw)


OPS = {
    "conv_3x3_s2": (lambda x, w: cj.conv(x, w, stride=2, padding=1), (8, 8, 4), (3, 3, 4, 6)),
    "conv_1x1": (lambda x, w: cj.conv(x, w), (8, 8, 4), (1, 1, 4, 6)),
    "conv_tiny_output": (lambda x, w: cj.conv(x, w, padding=1), (2, 2, 4), (3, 3, 4, 6)),
    "depthwise_s2_m2": (
        lambda x, w: cj.depthwise_conv(x, w, stride=2, padding="same"),
        (8, 8, 4),
        (3, 3, 1, 8),
    ),
    "depthwise_3d_dilated": (
        lambda x, w: cj.depthwise_conv(x, w, dilation=2, padding=2),
        (5, 6, 6, 3),
        (3, 3, 3, 1, 3),
    ),
    "depthwise_channels_first": (
        lambda x, w: cj.depthwise_conv(x, w, stride=(2, 1), padding=1, layout="channels_first"),
        (4, 7, 7),
        (4, 1, 3, 3),
    ),
    "separable": (
        lambda x, w: cj.separable_conv(x, w, jnp.ones((1, 1, 8, 5)), padding=1),
        (8, 8, 4),
        (3, 3, 1, 8),
    ),
}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_gpu_and_tpu_lowerings_are_the_raw_lax_convolutions(monkeypatch, platform):
    x_b = 2
    programs = {}
    for name, (f, xs, ws) in OPS.items():
        args = (jnp.ones((x_b, *xs)), jnp.ones(ws))
        grad = jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), (0, 1))
        programs[name] = [_program(g, args, platform) for g in (f, grad)]
        # The CPU lowering of the same op is a formulation (except the plain 3x3).
        if name != "conv_3x3_s2":
            assert not _program(f, args, "cpu")[0], name
    _raw_everywhere(monkeypatch)
    for name, (f, xs, ws) in OPS.items():
        args = (jnp.ones((x_b, *xs)), jnp.ones(ws))
        grad = jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), (0, 1))
        fresh = lambda x, w, f=f: f(x, w)  # noqa: E731 - not f itself: jit caches its trace
        ref = [_program(g, args, platform) for g in (fresh, grad)]
        assert ref[0][0], name  # the reference really has its convolutions
        assert programs[name] == ref, name


def _train_step_program(build, shape, platform):
    """One SGD step of ``build()`` on ones (BatchNorm in training mode), as ``cnn_jax.train``
    writes it: ``nnx.value_and_grad`` of the merged model."""
    model = build(rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def step(params, rest, x):
        model = nnx.merge(graphdef, params, rest)
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        return params, nnx.split(model, nnx.Param, ...)[2], loss

    return _program(step, (params, rest, jnp.ones(shape)), platform)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_gpu_lowering_of_a_training_step_is_unchanged(monkeypatch, name):
    build, shape = {
        "mobilenet_v2": (
            functools.partial(models.MobileNetV2, 10, width_mult=0.35),
            (2, 32, 32, 3),
        ),
        "resnet18": (functools.partial(models.ResNet18, 10, small_input=True), (2, 16, 16, 3)),
    }[name]
    ours = _train_step_program(build, shape, "cuda")
    if name == "mobilenet_v2":  # its CPU program computes the depthwise convs otherwise
        cpu = _train_step_program(build, shape, "cpu")
        assert len(cpu[0]) < len(ours[0])
    _raw_everywhere(monkeypatch)
    ref = _train_step_program(build, shape, "cuda")
    assert ours[0] and ours == ref
