"""cj.conv_transpose: PyTorch parity (values and gradients), VJP of conv, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _layout import (
    check_conv_against_torch,
    parametrize_configs,
    random_geometry,
    random_padding,
    tkernel_to_cf,
    tkernel_to_cl,
    to_cf,
    to_cl,
)
from jax.test_util import check_grads

import cnn_jax as cj

TORCH_CT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def torch_ct(x, w, b, s, pads, op, d, g):
    """Reference for any (low, high) pads: torch with padding 0, zero-extend, crop."""
    n = w.dim() - 2
    full = TORCH_CT[n](x, w, b, stride=s, dilation=d, groups=g)
    out = [
        (i - 1) * ss - lo - hi + dd * (kk - 1) + oo + 1
        for i, ss, (lo, hi), dd, kk, oo in zip(x.shape[2:], s, pads, d, w.shape[2:], op)
    ]
    extra = [max(lo + o - f, 0) for (lo, _), o, f in zip(pads, out, full.shape[2:])]
    if any(extra):
        flat = [a for e in reversed(extra) for a in (0, e)]
        bias_part = 0 if b is None else b.reshape(1, -1, *([1] * n))
        full = F.pad(full - bias_part, flat) + bias_part
    idx = (slice(None), slice(None)) + tuple(slice(lo, lo + o) for (lo, _), o in zip(pads, out))
    return full[idx]


def _draw(rng):
    n, g, c_in, c_out, k, s, d, sp = random_geometry(
        rng, [1, 2], 5, lambda n: 4 if n < 3 else 3, (2, 5)
    )
    op = tuple(int(rng.integers(0, max(ss, dd))) for ss, dd in zip(s, d))
    padding, pads = random_padding(
        rng, rng.choice(["int", "tuple", "pairs", "valid"]), n, sp, k, s, d
    )
    outs = [
        (i - 1) * ss - lo - hi + dd * (kk - 1) + oo + 1
        for i, ss, (lo, hi), dd, kk, oo in zip(sp, s, pads, d, k, op)
    ]
    return (n, g, c_in, c_out, k, s, d, sp, op, padding, pads) if min(outs) >= 1 else None


@parametrize_configs(_draw, 12, "n g cin cout k s d sp op p pads")
def test_conv_transpose_matches_torch_values_and_grads(rng, config):
    """Random configs, drawn once at collection; one jit compilation each."""
    n, g, c_in, c_out, k, s, d, sp, op, padding, pads, layout = config
    ref = lambda *t: torch_ct(*t, s, pads, op, d, g)  # noqa: E731
    arrays = check_conv_against_torch(
        rng,
        lambda *a: cj.conv_transpose(
            *a, stride=s, padding=padding, output_padding=op, dilation=d, groups=g, layout=layout
        ),
        ref,
        [(2, c_in, *sp), (c_in, c_out // g, *k), (c_out,)],
        layout,
        lambda w: tkernel_to_cl(w, n),
        lambda w: tkernel_to_cf(w, n),
        str(config),
    )
    if all(lo == hi for lo, hi in pads):  # the reference is straight torch where it applies
        tensors = [torch.tensor(a) for a in arrays]
        direct = TORCH_CT[n](
            *tensors,
            stride=s,
            output_padding=op,
            padding=[p[0] for p in pads],
            dilation=d,
            groups=g,
        )
        np.testing.assert_allclose(direct.numpy(), ref(*tensors).numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "n,s,k,d,padding,g,layout",
    [
        (2, (2, 2), (4, 4), (1, 1), 1, 1, "channels_last"),
        (2, (3, 2), (3, 2), (2, 1), ((2, 0), (1, 1)), 2, "channels_first"),
        (1, (4,), (3,), (1,), 0, 1, "channels_last"),  # k < s: some phases get no tap
        (3, (2, 1, 2), (2, 3, 3), (1, 2, 2), (0, 1, 1), 2, "channels_last"),
        # prod(stride) > 16: the interior-padding path
        (2, (5, 4), (3, 4), (1, 2), ((1, 2), (0, 3)), 1, "channels_first"),
    ],
)
def test_conv_transpose_is_vjp_of_conv(rng, n, s, k, d, padding, g, layout):
    c_in, c_out, sp = 2 * g, 2 * g, (5, 6, 4)[:n]
    x = jnp.asarray(rng.standard_normal((2, c_in, *sp)), jnp.float32)
    w_conv = jnp.asarray(rng.standard_normal((c_out, c_in // g, *k)), jnp.float32)  # OIHW
    if layout == "channels_last":
        x = jnp.moveaxis(x, 1, -1)
        w_conv = jnp.moveaxis(w_conv, (0, 1), (n + 1, n))  # HWIO
    kw = dict(stride=s, padding=padding, dilation=d, groups=g, layout=layout)

    @jax.jit
    def both(x_, w_):
        y, vjp = jax.vjp(lambda a: cj.conv(a, w_, **kw), x_)
        ct = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
        (gx,) = vjp(ct)
        # The conv's OIHW kernel is the transposed op's (C_in, C_out/G, *k) weight; the
        # HWIO (*k, I/G, O) kernel becomes (*k, O, I/G). The forward conv's input size is
        # recovered through output_padding.
        w_t = w_ if layout == "channels_first" else jnp.swapaxes(w_, n, n + 1)
        sp_y = y.shape[2:] if layout == "channels_first" else y.shape[1:-1]
        pads = [padding] * n if isinstance(padding, int) else padding
        pads = [(p, p) if isinstance(p, int) else p for p in pads]
        op = tuple(
            i - ((o - 1) * ss - lo - hi + dd * (kk - 1) + 1)
            for i, o, ss, (lo, hi), dd, kk in zip(sp, sp_y, s, pads, d, k)
        )
        return gx, cj.conv_transpose(
            ct,
            w_t,
            stride=s,
            padding=padding,
            output_padding=op,
            dilation=d,
            groups=g,
            layout=layout,
        )

    gx, yt = both(x, w_conv)
    np.testing.assert_allclose(np.asarray(yt), np.asarray(gx), rtol=1e-5, atol=1e-5)


def test_unbatched_and_bias_by_hand():
    # 1-D, one channel, kernel [1, 2], stride 2: each input spreads a scaled copy.
    x = jnp.array([[1.0], [10.0], [100.0]])  # (L, C) unbatched channels_last
    w = jnp.array([1.0, 2.0]).reshape(2, 1, 1)
    y = cj.conv_transpose(x, w, jnp.array([0.5]), stride=2)
    np.testing.assert_allclose(np.asarray(y)[:, 0], [1.5, 2.5, 10.5, 20.5, 100.5, 200.5])
    y = cj.conv_transpose(x, w, stride=2, padding=((1, 0),), output_padding=1)
    np.testing.assert_allclose(np.asarray(y)[:, 0], [2, 10, 20, 100, 200, 0])
    y = cj.conv_transpose(x.T, w.reshape(1, 1, 2), stride=3, layout="channels_first")
    np.testing.assert_allclose(np.asarray(y)[0], [1, 2, 0, 10, 20, 0, 100, 200])


def test_many_phases_path_matches_torch(rng):
    x = rng.standard_normal((1, 2, 3, 2)).astype(np.float32)
    w = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref = F.conv_transpose2d(
        torch.tensor(x),
        torch.tensor(w),
        stride=(5, 4),
        padding=(1, 2),
        output_padding=(3, 1),
        dilation=(1, 2),
    )
    y = cj.conv_transpose(
        x,
        w,
        stride=(5, 4),
        padding=(1, 2),
        output_padding=(3, 1),
        dilation=(1, 2),
        layout="channels_first",
    )
    np.testing.assert_allclose(np.asarray(y), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_gradient_never_uses_lhs_dilation():
    """The fast path: no conv in the forward or backward graph dilates its input."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 2))

    def loss(x_, w_):
        return jnp.sum(cj.conv_transpose(x_, w_, stride=2, padding=1, output_padding=1) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w)

    def convs(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                yield eqn
            for v in eqn.params.values():
                if hasattr(v, "jaxpr"):
                    yield from convs(getattr(v.jaxpr, "jaxpr", v.jaxpr))

    found = list(convs(jaxpr.jaxpr))
    assert len(found) >= 12  # 4 phases x (forward, input grad, kernel grad)
    assert all(set(e.params["lhs_dilation"]) == {1} for e in found)


def test_preferred_element_type_and_precision(rng):
    x = jnp.asarray(rng.standard_normal((1, 3, 3, 2)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((3, 3, 2, 2)), jnp.bfloat16)
    y = cj.conv_transpose(
        x, w, stride=2, preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST
    )
    assert y.dtype == jnp.float32 and y.shape == (1, 7, 7, 2)
    ref = cj.conv_transpose(x.astype(jnp.float32), w.astype(jnp.float32), stride=2)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_check_grads_and_vmap(rng):
    x = jnp.asarray(rng.standard_normal((1, 3, 3, 2)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 2, 1)), jnp.float32)

    def f(x_, w_):
        return cj.conv_transpose(x_, w_, stride=2, padding=1, output_padding=1, groups=1)

    check_grads(jax.jit(f), (x, w), order=1, modes=("fwd", "rev"), eps=1e-2, atol=5e-2, rtol=5e-2)
    xs = jnp.asarray(rng.standard_normal((3, 3, 3, 2)), jnp.float32)
    g = jax.jit(jax.vmap(f, (0, None)))
    np.testing.assert_allclose(np.asarray(g(xs, w)), np.asarray(f(xs, w)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kw,order",
    [
        (dict(stride=2, padding=1, output_padding=1), 1),  # phase decomposition
        (dict(stride=(2, 3), dilation=(2, 1), groups=2), 2),
        (dict(stride=3, padding=((0, 1), (2, 0))), 2),
        (dict(stride=(5, 4)), 1),  # > _MAX_PHASES: interior padding
    ],
)
def test_check_grads_float64_default_tolerances(rng, kw, order):
    # Forward and reverse mode at JAX's default tolerances, in float64.
    x = rng.standard_normal((1, 3, 3, 4))
    w = rng.standard_normal((3, 2, 4, 1))  # (*k, C_in, C_out // groups)

    def f(x_, w_):
        return cj.conv_transpose(x_, w_, **kw)

    with jax.enable_x64(True):
        check_grads(jax.jit(f), (jnp.asarray(x), jnp.asarray(w)), order=order, modes=("fwd", "rev"))


def test_conv_transpose_errors():
    x = jnp.zeros((1, 4, 4, 4))
    w = jnp.zeros((3, 3, 4, 2))
    with pytest.raises(
        ValueError, match="conv_transpose: output_padding must be smaller than stride or dilation"
    ):
        cj.conv_transpose(x, w, stride=2, output_padding=2)
    with pytest.raises(
        ValueError,
        match="conv_transpose: kernel in-channels must equal the input channels C_in=4, got 3",
    ):
        cj.conv_transpose(x, jnp.zeros((3, 3, 3, 2)))
    with pytest.raises(
        ValueError,
        match="conv_transpose: groups must divide the input channels, got groups=3 for C_in=4",
    ):
        cj.conv_transpose(x, w, groups=3)
    with pytest.raises(
        ValueError,
        match="conv_transpose: padding must be an int, a tuple of 2 ints, 2 \\(low, high\\) pairs or one of \\('valid',\\)",
    ):
        cj.conv_transpose(x, w, padding="same")
    with pytest.raises(
        ValueError, match="conv_transpose: padding must leave a positive output size"
    ):
        cj.conv_transpose(x, w, padding=4)
    with pytest.raises(ValueError, match="conv_transpose: x must have 4 dims"):
        cj.conv_transpose(jnp.zeros((4, 4)), w)
    with pytest.raises(ValueError, match="conv_transpose: kernel must have at least 3 dims"):
        cj.conv_transpose(x, jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"conv_transpose: bias must have shape \(2,\)"):
        cj.conv_transpose(x, w, jnp.zeros(3))
    with pytest.raises(ValueError, match="conv_transpose: output_padding must be >= 0"):
        cj.conv_transpose(x, w, output_padding=-1)
    with pytest.raises(ValueError, match="conv_transpose: layout must be one of"):
        cj.conv_transpose(x, w, layout="channels_middle")
    with pytest.raises(ValueError, match="conv_transpose: stride must be >= 1"):
        cj.conv_transpose(x, w, stride=(1, 0))
    with pytest.raises(ValueError, match="conv_transpose: padding must be non-negative"):
        cj.conv_transpose(x, w, padding=((0, -1), (0, 0)))


@pytest.mark.parametrize(
    "x_shape,k,layout",
    [
        ((2, 3, 5), (2,), "channels_first"),
        ((2, 3, 4, 5), (2, 3), "channels_last"),
        ((1, 2, 3, 2, 2), (2, 1, 2), "channels_first"),
        ((2, 3, 4, 4), (1, 1), "channels_last"),
    ],
)
def test_kernel_equal_to_stride_is_one_matmul_and_matches_torch(x_shape, k, layout):
    # kernel_size == stride, no padding (U-Net's up-conv) runs as one matmul plus a
    # depth-to-space reshape; values and both gradients must still equal PyTorch's.
    n = len(k)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(np.float32)  # channels_first (N, C_in, *sp)
    w = rng.standard_normal((x_shape[1], 4, *k)).astype(np.float32)
    ct = rng.standard_normal((x_shape[0], 4, *(i * kk for i, kk in zip(x_shape[2:], k))))
    ct = ct.astype(np.float32)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    yt = TORCH_CT[n](xt, wt, stride=k)
    yt.backward(torch.tensor(ct))
    cl = layout == "channels_last"
    xj = jnp.asarray(to_cl(x) if cl else x)
    wj = jnp.asarray(tkernel_to_cl(w, n) if cl else w)
    y, pull = jax.vjp(lambda a, b: cj.conv_transpose(a, b, stride=k, layout=layout), xj, wj)
    gx, gw = pull(jnp.asarray(to_cl(ct) if cl else ct))
    back = (lambda a: to_cf(np.asarray(a))) if cl else np.asarray
    np.testing.assert_allclose(back(y), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(back(gx), xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    gw = tkernel_to_cf(np.asarray(gw), n) if cl else np.asarray(gw)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-5, atol=1e-5)
    hlo = jax.jit(lambda a, b: cj.conv_transpose(a, b, stride=k, layout=layout)).lower(xj, wj)
    assert "convolution" not in hlo.as_text()
