"""Shape arithmetic and the shared argument normalisers against PyTorch and by hand."""

import itertools
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnn_jax as cj
from cnn_jax._checks import ntuple, resolve_padding

# --- conv_output_shape -----------------------------------------------------------


def test_seed_output_sizes_26_30_15():
    # Seed: 28x28 MNIST image, 3x3 filter; padding 2; padding 2 with stride 2.
    assert cj.conv_output_shape((28, 28), 3) == (26, 26)
    assert cj.conv_output_shape((28, 28), 3, padding=2) == (30, 30)
    assert cj.conv_output_shape((28, 28), (3, 3), padding=(2, 2), stride=2) == (15, 15)


@pytest.mark.parametrize(
    "size,k,s,p,d",
    [
        c
        for c in itertools.product((5, 8), (1, 3), (1, 2, 3), (0, 1), (1, 2))
        if c[4] * (c[1] - 1) < c[0] + 2 * c[3]
    ],
)
def test_conv_output_shape_matches_torch_conv1d(size, k, s, p, d):
    y = F.conv1d(torch.zeros(1, 1, size), torch.zeros(1, 1, k), stride=s, padding=p, dilation=d)
    assert cj.conv_output_shape((size,), k, stride=s, padding=p, dilation=d) == tuple(y.shape[2:])


@pytest.mark.parametrize(
    "size,k,s,p",
    [c for c in itertools.product((4, 5, 7), (2, 3), (1, 2, 3), (0, 1)) if c[3] <= c[1] // 2],
)
def test_ceil_mode_matches_torch_max_pool(size, k, s, p):
    y = F.max_pool1d(torch.zeros(1, 1, size), k, stride=s, padding=p, ceil_mode=True)
    assert cj.conv_output_shape((size,), k, stride=s, padding=p, ceil_mode=True) == tuple(
        y.shape[2:]
    )


def test_string_paddings_by_hand():
    # "same": ceil(in / stride), extra pixel on the high side.
    assert cj.conv_output_shape((5,), 3, padding="same") == (5,)
    assert cj.conv_output_shape((5,), 3, padding="SAME", stride=2) == (3,)
    assert cj.conv_output_shape((6, 7), 4, padding="same", stride=3) == (2, 3)
    # "full": every overlap, as np.convolve.
    assert cj.conv_output_shape((12,), 4, padding="full") == (
        len(np.convolve(np.ones(12), np.ones(4))),
    )
    # "causal": same length at stride 1 whatever the dilation.
    assert cj.conv_output_shape((10,), 3, padding="causal", dilation=4) == (10,)
    assert cj.conv_output_shape((10,), 3, padding="valid") == (8,)
    assert cj.conv_output_shape((10,), 3, padding=((2, 0),)) == (10,)


def test_conv_output_shape_errors():
    with pytest.raises(ValueError, match="conv_output_shape: kernel_size"):
        cj.conv_output_shape((3, 3), 5)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        cj.conv_output_shape((8,), 3, stride=0)
    with pytest.raises(ValueError, match="kernel_size must be an int or a tuple of 2 ints"):
        cj.conv_output_shape((8, 8), (3, 3, 3))
    with pytest.raises(TypeError, match="input_shape must be a tuple"):
        cj.conv_output_shape(8, 3)
    with pytest.raises(ValueError, match="'causal' is only defined for 1-D"):
        cj.conv_output_shape((8, 8), 3, padding="causal")
    with pytest.raises(ValueError, match="padding must be an int, a tuple of 1 ints"):
        cj.conv_output_shape((8,), 3, padding="half")


def test_conv_output_shape_ceil_mode_takes_only_bools():
    # As max_pool1d(ceil_mode=...): a 7-long input, window 2, stride 2 -> 3 or 4.
    t = torch.zeros(1, 1, 7)
    assert cj.conv_output_shape((7,), 2, stride=2, ceil_mode=np.True_) == (4,)
    assert F.max_pool1d(t, 2, 2, ceil_mode=True).shape[-1] == 4
    assert cj.conv_output_shape((7,), 2, stride=2, ceil_mode=np.bool_(False)) == (3,)
    for bad in ("no", 1, None):
        with pytest.raises(
            TypeError, match=f"conv_output_shape: ceil_mode must be a bool, got {bad!r}"
        ):
            cj.conv_output_shape((7,), 2, stride=2, ceil_mode=bad)


# --- conv_transpose_output_shape -----------------------------------------------------


@pytest.mark.parametrize(
    "size,k,s,p,op,d",
    [
        (5, 4, 2, 0, 0, 1),
        (5, 3, 2, 1, 1, 1),
        (4, 3, 3, 1, 2, 1),
        (6, 2, 1, 0, 0, 2),
        (3, 5, 2, 2, 1, 3),
    ],
)
def test_conv_transpose_output_shape_matches_torch(size, k, s, p, op, d):
    y = F.conv_transpose1d(
        torch.zeros(1, 1, size),
        torch.zeros(1, 1, k),
        stride=s,
        padding=p,
        output_padding=op,
        dilation=d,
    )
    got = cj.conv_transpose_output_shape(
        (size,), k, stride=s, padding=p, output_padding=op, dilation=d
    )
    assert got == tuple(y.shape[2:])


def test_conv_transpose_output_shape_pairs_and_errors():
    # (low, high) pairs replace 2 * padding by low + high.
    assert cj.conv_transpose_output_shape((5,), 3, stride=2, padding=((1, 0),)) == (10,)
    assert cj.conv_transpose_output_shape((5,), 3, stride=2, padding="valid") == (11,)
    with pytest.raises(ValueError, match="output_padding must be smaller than stride or dilation"):
        cj.conv_transpose_output_shape((5,), 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="padding must be an int"):
        cj.conv_transpose_output_shape((5,), 3, padding="same")


@pytest.mark.parametrize("padding", [2, ((3, 2),), ((0, 6),)])
def test_conv_transpose_output_shape_rejects_non_positive_output(padding):
    # (2 - 1) * 1 - lo - hi + (3 - 1) + 1 = 4 - lo - hi <= 0.
    with pytest.raises(
        ValueError,
        match=r"conv_transpose_output_shape: padding .* must leave "
        r"a positive output size, got \((0|-1|-2),\)",
    ):
        cj.conv_transpose_output_shape((2,), 3, padding=padding)


# --- receptive_field ---------------------------------------------------------------


def test_receptive_field_by_hand():
    # Two 3x3 stride-1 convs see 5x5; the first unit's field is centred on pixel 2.
    assert cj.receptive_field([(3, 1), (3, 1)]) == cj.ReceptiveField(5, 1, 2.0)
    # Layers (3,1), (2,2), (3,1), forward: size 1 + 2*1 = 3, + 1*1 = 4, + 2*2 = 8;
    # jump 2; start 1 + 0.5 + 2*1 = 3.5.
    assert cj.receptive_field([(3, 1), (2, 2), (3, 1)]) == cj.ReceptiveField(8, 2, 3.5)
    # Dilation: effective kernel d*(k-1)+1 = 5; padding shifts the start left.
    assert cj.receptive_field([(3, 1, 2, 2)]) == cj.ReceptiveField(5, 1, 0.0)
    # Per-dim tuples.
    rf = cj.receptive_field([((3, 1), 1), (2, 2)])
    assert rf == cj.ReceptiveField((4, 2), (2, 2), (1.5, 0.5))


def test_receptive_field_backward_recursion_matches_seed_formula():
    layers = [(7, 2), (3, 2), (3, 1), (3, 1), (3, 2), (3, 1)]
    r = 1
    for k, s in reversed(layers):
        r = s * r + k - s  # seed 003: r_{l-1} = s_l r_l + k_l - s_l
    rf = cj.receptive_field(layers)
    assert rf.size == r
    assert rf.jump == int(np.prod([s for _, s in layers]))


def test_receptive_field_errors():
    with pytest.raises(ValueError, match="receptive_field: layers must hold at least one"):
        cj.receptive_field([])
    with pytest.raises(ValueError, match=r"each layer must be \(kernel_size, stride"):
        cj.receptive_field([(3,)])
    with pytest.raises(TypeError, match="receptive_field: layers must be a sequence"):
        cj.receptive_field(object())


# --- shared normalisers ------------------------------------------------------------


def test_ntuple_accepts_numpy_ints_and_rejects_floats():
    assert ntuple(np.int64(3), 2, "stride", "op") == (3, 3)
    assert ntuple((1, np.int32(2)), 2, "stride", "op") == (1, 2)
    with pytest.raises(TypeError, match=r"op: stride must be an int or a tuple of ints, got 1\.5"):
        ntuple(1.5, 2, "stride", "op")
    with pytest.raises(TypeError, match="op: stride must be an int"):
        ntuple(True, 2, "stride", "op")
    with pytest.raises(TypeError, match="op: stride must be an int or a tuple of 2 ints, got None"):
        ntuple(None, 2, "stride", "op")
    with pytest.raises(ValueError, match="op: dilation must be >= 1 in every dim, got"):
        ntuple((1, 0), 2, "dilation", "op")


def test_resolve_padding_forms():
    assert resolve_padding(1, 2, "op") == ((1, 1), (1, 1))
    assert resolve_padding((1, 2), 2, "op") == ((1, 1), (2, 2))
    assert resolve_padding([(0, 1), [2, 3]], 2, "op") == ((0, 1), (2, 3))
    assert resolve_padding("Valid", 2, "op") == ((0, 0), (0, 0))
    assert resolve_padding("full", 1, "op", kernel_size=(3,), dilation=(2,)) == ((4, 4),)
    assert resolve_padding("same", 1, "op", input_shape=(5,), kernel_size=(4,)) == ((1, 2),)
    with pytest.raises(ValueError, match="op: padding must be non-negative"):
        resolve_padding(-1, 1, "op")
    with pytest.raises(ValueError, match=r"one pair per spatial dim \(2\)"):
        resolve_padding([(1, 1)], 2, "op")
    with pytest.raises(ValueError, match=r"pairs must be \(low, high\)"):
        resolve_padding([(1, 1, 1)], 1, "op")
    with pytest.raises(TypeError, match="op: padding must be an int, a tuple of 1 ints"):
        resolve_padding(1.0, 1, "op")


# --- size bounds (MAX_SIZE) ----------------------------------------------------------

_BOUND = r"must keep the {} within 2\*\*31 - 1 elements per spatial dim"
_X = np.ones((1, 2, 3, 3), np.float32)  # channels_first


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: cj.conv(
                _X, np.ones((3, 2, 3, 3), np.float32), padding=10**6, layout="channels_first"
            ),
            "conv: padding " + _BOUND.format("padded input"),
        ),
        (
            lambda: cj.conv(
                _X, np.ones((3, 2, 1, 1), np.float32), stride=2**40, layout="channels_first"
            ),
            r"conv: stride must be <= 2\*\*31 - 1",
        ),
        (
            lambda: cj.conv(
                _X, np.ones((3, 2, 1, 1), np.float32), dilation=(1, 2**31), layout="channels_first"
            ),
            r"conv: dilation must be <= 2\*\*31 - 1",
        ),
        (
            lambda: cj.conv(
                _X, np.ones((3, 2, 1, 1), np.float32), groups=2**31, layout="channels_first"
            ),
            r"conv: groups must be <= 2\*\*31 - 1",
        ),
        (
            lambda: cj.conv_transpose(
                _X, np.ones((2, 3, 1, 1), np.float32), stride=10**5, layout="channels_first"
            ),
            "conv_transpose: stride, dilation and output_padding " + _BOUND.format("output"),
        ),
        (
            lambda: cj.conv_input_grad(
                np.ones((1, 3, 3, 1)), np.ones((1, 1, 1, 1)), (10**5, 10**5)
            ),
            "conv_input_grad: input_shape " + _BOUND.format("output"),
        ),
        (
            lambda: cj.max_pool(
                _X, 3, padding=((10**5, 10**5), (2**31, 0)), layout="channels_first"
            ),
            r"max_pool: padding must be <= 2\*\*31 - 1",
        ),
        (
            lambda: cj.avg_pool(np.ones((1, 1, 1, 1)), (1, 1), padding=((2**16, 2**16),) * 2),
            "avg_pool: padding " + _BOUND.format("padded input"),
        ),
        (
            lambda: cj.adaptive_avg_pool(_X, 10**5),
            "adaptive_avg_pool: output_size " + _BOUND.format("output"),
        ),
        (
            lambda: cj.adaptive_max_pool(_X, (2**31, 1), layout="channels_first"),
            "adaptive_max_pool: output_size " + _BOUND.format("output"),
        ),
        (lambda: cj.upsample(_X, 1e6), "upsample: scale_factor " + _BOUND.format("output")),
        (lambda: cj.upsample(_X, size=(2**31 - 1, 2)), "upsample: size " + _BOUND.format("output")),
        (lambda: cj.pad(_X, 10**5), "pad: padding " + _BOUND.format("output")),
        (
            lambda: cj.unfold(_X, 1, padding=10**5),
            "unfold: padding " + _BOUND.format("padded input"),
        ),
        (
            lambda: cj.unfold(np.ones((1, 1, 1)), (50001,), padding=((50000, 50000),)),
            "unfold: window " + _BOUND.format("patches"),
        ),
        (
            lambda: cj.fold(np.ones((1, 1, 1)), (10**5, 10**5), 1),
            "fold: output_size " + _BOUND.format("output"),
        ),
    ],
)
def test_sizes_beyond_int32_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_padding_2_to_31_raises_instead_of_aborting():
    # This call once aborted the interpreter (SIGABRT inside XLA), so it runs in a
    # subprocess: an abort fails this test instead of killing pytest.
    code = (
        "import jax.numpy as jnp, cnn_jax as cj\n"
        "try:\n"
        "    cj.conv(jnp.ones((1, 2, 3, 3)), jnp.ones((3, 2, 3, 3)), padding=2**31,\n"
        "            layout='channels_first')\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "ValueError: conv: padding must be <= 2**31 - 1 in every dim, got 2147483648" in proc.stdout
    )


# --- one dtype rule for every op (DTYPE_RULES) ---------------------------------------

_XI = np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3) % 7 - 3  # small ints, channels_last

# (name, call, rule): "float" refuses integers, "number" refuses bool, "any" takes both.
_DTYPE_CASES = [
    ("conv", lambda x: cj.conv(x, np.ones((2, 2, 3, 2), x.dtype)), "number"),
    (
        "conv_transpose",
        lambda x: cj.conv_transpose(x, np.ones((2, 2, 3, 2), x.dtype), stride=2),
        "number",
    ),
    (
        "conv_input_grad",
        lambda x: cj.conv_input_grad(x, np.ones((1, 1, 2, 3), x.dtype), (4, 4)),
        "number",
    ),
    ("conv_kernel_grad", lambda x: cj.conv_kernel_grad(x, x, (1, 1, 3, 3)), "number"),
    ("sum_pool", lambda x: cj.sum_pool(x, 2, 1, padding=1), "number"),
    ("fold", lambda x: cj.fold(x.reshape(2, 4, 12), (3, 3), 2), "number"),
    ("max_pool", lambda x: cj.max_pool(x, 3, 2, padding=1, dilation=1), "any"),
    ("min_pool", lambda x: cj.min_pool(x, 2, 1, padding=1), "any"),
    ("adaptive_max_pool", lambda x: cj.adaptive_max_pool(x, 3), "any"),
    ("global_max_pool", lambda x: cj.global_max_pool(x), "any"),
    ("upsample", lambda x: cj.upsample(x, 1.5), "any"),
    ("pixel_shuffle", lambda x: cj.pixel_shuffle(x.reshape(2, 4, 2, 6), 1), "any"),
    ("pixel_unshuffle", lambda x: cj.pixel_unshuffle(x, 2), "any"),
    ("unfold", lambda x: cj.unfold(x, 2, padding=1), "any"),
    ("pad", lambda x: cj.pad(x, 1, mode="reflect"), "any"),
    ("avg_pool", lambda x: cj.avg_pool(x, 2), "float"),
    ("lp_pool", lambda x: cj.lp_pool(x, 2, 2), "float"),
    ("adaptive_avg_pool", lambda x: cj.adaptive_avg_pool(x, 3), "float"),
    ("global_avg_pool", lambda x: cj.global_avg_pool(x), "float"),
    ("upsample", lambda x: cj.upsample(x, 2, method="linear"), "float"),
]


@pytest.mark.parametrize(
    "name,call,rule", _DTYPE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(_DTYPE_CASES)]
)
@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_])
def test_integer_and_bool_inputs_follow_one_rule(name, call, rule, dtype):
    x = (_XI > 0) if dtype is np.bool_ else (_XI % 4 if dtype is np.uint8 else _XI)
    x = jnp.asarray(x, dtype)
    refused = rule == "float" or (rule == "number" and dtype is np.bool_)
    if refused:
        kind = "floating-point array" if rule == "float" else "floating-point or integer array"
        with pytest.raises(
            TypeError,
            match=rf"{name}: (x|patches|dy) must be a {kind} .*got "
            rf"dtype {np.dtype(dtype).name}",
        ):
            call(x)
        return
    y = call(x)
    assert y.dtype == x.dtype
    # Exact: the same numbers as the float computation (small ints, no rounding).
    ref = np.asarray(call(x.astype(jnp.float32)))
    np.testing.assert_array_equal(
        np.asarray(y).astype(np.float32), ref.astype(dtype).astype(np.float32)
    )


def test_pad_value_must_fit_an_integer_dtype():
    x = jnp.zeros((1, 2, 2, 1), jnp.int32)
    with pytest.raises(
        ValueError,
        match=r"pad: value must be exactly representable in x's "
        r"dtype int32, got 0.5",
    ):
        cj.pad(x, 1, mode="constant", value=0.5)
    with pytest.raises(ValueError, match=r"dtype uint8, got 300"):
        cj.pad(x.astype(jnp.uint8), 1, mode="constant", value=300)
    assert int(cj.pad(x, 1, mode="constant", value=7.0)[0, 0, 0, 0]) == 7
