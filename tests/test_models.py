"""Model zoo: parameter counts (torchvision's and by hand), shapes, modes, training, errors.

Shapes and counts use ``nnx.eval_shape`` (no weights drawn, nothing compiled); only the
training and mode tests run a tiny real model.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import cnn_jax as cj
from cnn_jax.models import (
    VGG,
    VGG11,
    VGG16BN,
    AlexNet,
    ConvNeXt,
    EfficientNet,
    EfficientNetB0,
    LeNet5,
    MobileNetV2,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNeXt50_32x4d,
    SimpleCNN,
    UNet,
)
from cnn_jax.nn import BasicBlock, Bottleneck, StochasticDepth


def _abstract(constructor):
    return nnx.eval_shape(constructor)


@functools.cache
def _zoo(name):
    """The 1000-class model ``name`` of cnn_jax.models, abstract, built once per worker."""
    return _abstract(lambda: getattr(cj.models, name)(1000, rngs=nnx.Rngs(0)))


def _num_params(model):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _out(model, shape, dtype=jnp.float32):
    return nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct(shape, dtype))


@pytest.mark.parametrize(
    "constructor, expected",
    [
        # torchvision's counts (1000 classes, 3 input channels).
        (lambda: ResNet18(1000, rngs=nnx.Rngs(0)), 11_689_512),
        (lambda: ResNet34(1000, rngs=nnx.Rngs(0)), 21_797_672),
        (lambda: ResNet50(1000, rngs=nnx.Rngs(0)), 25_557_032),
        (lambda: MobileNetV2(1000, rngs=nnx.Rngs(0)), 3_504_872),
        # LeNet-5: 156 + 2,416 + 48,120 + 10,164 + 850.
        (lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)), 61_706),
        ("AlexNet", 61_100_840),
        ("VGG11", 132_863_336),
        ("VGG11BN", 132_868_840),
        ("VGG16", 138_357_544),
        ("VGG16BN", 138_365_992),
        ("EfficientNetB0", 5_288_548),
        ("ConvNeXtTiny", 28_589_128),
        ("ResNeXt50_32x4d", 25_028_904),
        ("WideResNet50_2", 68_883_240),
    ],
)
def test_parameter_counts(constructor, expected):
    model = _zoo(constructor) if isinstance(constructor, str) else _abstract(constructor)
    assert _num_params(model) == expected


def test_small_parameter_counts_by_hand():
    # SimpleCNN(width=1, in 1, 2 classes): bias-free 3x3 convs (9 * in * out) + BN (2 * out)
    # with widths 1, 1, 1, 1, 2, 2, 4, 4, 8, 8; then Linear(8, 2) = 16 + 2.
    convs = [(1, 1), (1, 1), (1, 1), (1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8)]
    expected = sum(9 * i * o + 2 * o for i, o in convs) + 8 * 2 + 2
    model = _abstract(lambda: SimpleCNN(2, in_channels=1, width=1, rngs=nnx.Rngs(0)))
    # 4 * 11 + 22 + 40 + 80 + 152 + 304 + 592 + 18
    assert _num_params(model) == expected == 1_252
    # UNet(2 classes, in 1, base 2, depth 1):
    # down0 = double_conv(1, 2): 18 + 4 + 36 + 4 = 62; bottom = double_conv(2, 4):
    # 72 + 8 + 144 + 8 = 232; up0 = ConvTranspose(4, 2, 2x2): 2*2*4*2 + 2 = 34;
    # up_conv0 = double_conv(4, 2): 72 + 4 + 36 + 4 = 116; head 1x1(2, 2): 4 + 2 = 6.
    model = _abstract(lambda: UNet(2, in_channels=1, base_width=2, depth=1, rngs=nnx.Rngs(0)))
    assert _num_params(model) == 62 + 232 + 34 + 116 + 6


@pytest.mark.parametrize(
    "constructor, shapes",
    [
        (lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)), {(2, 32, 32, 1): (2, 10)}),
        (lambda: LeNet5(7, input_size=(28, 20), rngs=nnx.Rngs(0)), {(3, 28, 20, 3): (3, 7)}),
        (
            lambda: SimpleCNN(10, in_channels=1, width=4, rngs=nnx.Rngs(0)),
            {(2, 8, 8, 1): (2, 10), (1, 9, 13, 1): (1, 10), (2, 32, 32, 1): (2, 10)},
        ),
        (
            lambda: ResNet18(10, rngs=nnx.Rngs(0)),
            {(2, 32, 32, 3): (2, 10), (1, 65, 48, 3): (1, 10)},
        ),
        (
            lambda: ResNet18(10, small_input=True, width=16, rngs=nnx.Rngs(0)),
            {(2, 32, 32, 3): (2, 10), (2, 8, 8, 3): (2, 10)},
        ),
        (lambda: ResNet50(5, in_channels=1, width=8, rngs=nnx.Rngs(0)), {(1, 64, 64, 1): (1, 5)}),
        (
            lambda: MobileNetV2(10, width_mult=0.5, rngs=nnx.Rngs(0)),
            {(2, 32, 32, 3): (2, 10), (1, 96, 80, 3): (1, 10)},
        ),
        (
            lambda: UNet(4, in_channels=1, rngs=nnx.Rngs(0)),
            {(2, 16, 16, 1): (2, 16, 16, 4), (1, 8, 24, 1): (1, 8, 24, 4)},
        ),
        # The smallest inputs each new model accepts (and 32x32 where that is enough).
        (
            lambda: AlexNet(10, width=8, hidden=16, rngs=nnx.Rngs(0)),
            {(2, 63, 63, 3): (2, 10), (1, 224, 200, 3): (1, 10)},
        ),
        (
            lambda: VGG16BN(10, in_channels=1, width=8, hidden=16, rngs=nnx.Rngs(0)),
            {(2, 32, 32, 1): (2, 10), (1, 50, 40, 1): (1, 10)},
        ),
        (
            lambda: EfficientNet(10, depth_mult=0.25, rngs=nnx.Rngs(0)),
            {(2, 32, 32, 3): (2, 10), (1, 8, 8, 3): (1, 10)},
        ),
        (lambda: ConvNeXt(10, depths=(1, 1, 1, 1), rngs=nnx.Rngs(0)), {(2, 32, 32, 3): (2, 10)}),
        (
            lambda: ResNet(
                10,
                block=Bottleneck,
                stage_sizes=(1, 1, 1, 1),
                groups=32,
                width_per_group=4,
                small_input=True,
                rngs=nnx.Rngs(0),
            ),
            {(2, 32, 32, 3): (2, 10)},
        ),
    ],
)
def test_forward_shapes(constructor, shapes):
    model = _abstract(constructor)
    for shape, expected in shapes.items():
        y = _out(model, shape)
        assert y.shape == expected and y.dtype == jnp.float32


def test_resnet_stage_shapes_and_names():
    model = _abstract(lambda: ResNet50(10, width=8, rngs=nnx.Rngs(0)))
    assert [len(s) for s in model.stages] == [3, 4, 6, 3]
    assert isinstance(model.layer1[0], Bottleneck)
    assert model.layer1[0].downsample is not None  # 8 -> 32 channels
    assert model.layer1[1].downsample is None
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    assert model.fc.in_features == 8 * 8 * 4
    small = _abstract(lambda: ResNet18(10, small_input=True, rngs=nnx.Rngs(0)))
    assert small.maxpool is None and small.conv1.kernel_size == (3, 3)
    assert small.conv1.stride == (1, 1)


def test_mobilenet_v2_structure_follows_torchvision():
    model = _abstract(lambda: MobileNetV2(1000, rngs=nnx.Rngs(0)))
    assert len(model.features.layers) == 19
    assert model.features.layers[1].conv.layers[0].layers[0].groups == 32  # depthwise, t=1
    assert model.features.layers[18].layers[0].out_features == 1280
    assert model.classifier.layers[0].rate == 0.2
    assert [blk.use_res_connect for blk in model.features.layers[1:18]] == [
        False,
        False,
        True,
        False,
        True,
        True,
        False,
        True,
        True,
        True,
        False,
        True,
        True,
        False,
        True,
        True,
        False,
    ]
    wide = _abstract(lambda: MobileNetV2(10, width_mult=1.4, rngs=nnx.Rngs(0)))
    assert wide.last_channel == 1792  # 1280 * 1.4, divisible by 8


def test_receptive_field_of_lenet5_by_hand():
    # conv5: size 5, start 2; pool2/2: size 6, jump 2, start 2 + 0.5 = 2.5;
    # conv5: 6 + 4*2 = 14, start 2.5 + 2*2 = 6.5; pool2/2: 14 + 2 = 16, jump 4, start 7.5.
    model = _abstract(lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)))
    assert cj.receptive_field(model) == ((16, 16), (4, 4), (7.5, 7.5))


def test_receptive_field_of_simple_cnn_and_resnet18_by_hand():
    # SimpleCNN: four 3x3 convs 9, pool 10 (jump 2), two convs 18, pool 20 (jump 4),
    # two convs 36, pool 40 (jump 8), two convs 72. Padding 1 keeps 3x3 convs centred;
    # each 2x2 pool shifts the start by half its jump: 0.5 + 1 + 2.
    model = _abstract(lambda: SimpleCNN(10, rngs=nnx.Rngs(0)))
    assert cj.receptive_field(model) == ((72, 72), (8, 8), (3.5, 3.5))
    # ResNet-18: 7x7/2 stem 7 (jump 2), 3x3/2 pool 11 (jump 4), layer1 four 3x3: 43;
    # layer2 51 (jump 8) + 3 * 16 = 99; layer3 115 (jump 16) + 3 * 32 = 211;
    # layer4 243 (jump 32) + 3 * 64 = 435, the published ResNet-18 receptive field.
    model = _abstract(lambda: ResNet18(1000, rngs=nnx.Rngs(0)))
    assert cj.receptive_field(model) == ((435, 435), (32, 32), (0.0, 0.0))
    unet = _abstract(lambda: UNet(2, base_width=2, depth=1, rngs=nnx.Rngs(0)))
    # two 3x3 convs 5, pool 6 (jump 2), two 3x3 convs 6 + 2 * 2 * 2 = 14.
    assert cj.receptive_field(unet).size == (14, 14)
    assert len(cj.nn.main_path(model)) == 2 + 16


def test_receptive_fields_of_the_new_models_by_hand():
    # AlexNet: conv 11/4 -> 11 (jump 4); pool 3/2 -> 19 (8); conv 5 -> 51; pool -> 67 (16);
    # three 3x3 -> 163; pool -> 195 (32), the published value.
    assert cj.receptive_field(_zoo("AlexNet")).size == (195,) * 2
    # VGG-16: 5; pool 6 (2); 14; pool 16 (4); 40; pool 44 (8); 92; pool 100 (16); 196;
    # pool 212 (32). VGG-11: 3, 4, 8, 10, 26, 30, 62, 70, 134, 150.
    assert cj.receptive_field(_zoo("VGG16")).size == (212,) * 2
    assert cj.receptive_field(_zoo("VGG11")).size == (150,) * 2
    # ConvNeXt-T: stem 4 (jump 4); 3 blocks of 7x7: + 3 * 6 * 4 -> 76; 2x2/2 -> 80 (8);
    # + 3 * 6 * 8 -> 224; -> 232 (16); + 9 * 6 * 16 -> 1096; -> 1112 (32); + 3 * 6 * 32.
    rf = cj.receptive_field(_zoo("ConvNeXtTiny"))
    assert rf.size == (1688,) * 2 and rf.jump == (32, 32)
    # EfficientNet-B0: stem 3x3/2 -> 3 (2); each block's depthwise k x k adds (k - 1) * jump
    # and multiplies the jump by its stride; 1x1 convs add nothing.
    size, jump = 3, 2
    for _, k, s, _, _, n in cj.models._efficientnet.EFFICIENTNET_B0_STAGES:
        for i in range(n):
            size += (k - 1) * jump
            jump *= s if i == 0 else 1
    rf = cj.receptive_field(_zoo("EfficientNetB0"))
    assert rf.size == (size, size) == (851, 851) and rf.jump == (32, 32)
    # ResNeXt / Wide ResNet: ResNet-50's path (groups and widths do not change it).
    assert cj.receptive_field(_zoo("ResNeXt50_32x4d")) == cj.receptive_field(_zoo("ResNet50"))


def test_resnext_and_wide_resnet_blocks():
    model = _zoo("ResNeXt50_32x4d")
    conv2 = model.layer1[0].conv2  # planes 64: int(64 * 4 / 64) * 32 = 128 channels, 32 groups
    assert (conv2.groups, conv2.in_features, conv2.out_features) == (32, 128, 128)
    wide = _zoo("WideResNet50_2")
    assert wide.layer4[0].conv2.out_features == 2 * 512 and wide.fc.in_features == 2048


def test_stochastic_depth_drops_whole_examples_in_training_only():
    layer = StochasticDepth(0.25, rngs=nnx.Rngs(0))
    x = jnp.ones((4000, 2, 2, 3))
    y = np.asarray(layer(x))
    per_example = y.reshape(4000, -1)
    assert (per_example == per_example[:, :1]).all()  # one draw per example ("row")
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((per_example[:, 0] == 0).mean() - 0.25) < 0.03
    assert not np.array_equal(y, np.asarray(layer(x)))  # a fresh mask per call
    batch = np.asarray(StochasticDepth(0.5, "batch", rngs=nnx.Rngs(1))(x))
    assert len(np.unique(batch)) == 1
    layer.eval()
    np.testing.assert_array_equal(np.asarray(layer(x)), np.ones(x.shape))
    np.testing.assert_array_equal(np.asarray(StochasticDepth(0.0)(x)), np.ones(x.shape))


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: StochasticDepth(1.5),
            r"StochasticDepth: rate must be a number in \[0, 1\], got 1.5",
        ),
        (
            lambda: StochasticDepth(0.1, "col"),
            r"StochasticDepth: mode must be one of \('row', 'batch'\), got 'col'",
        ),
        (lambda: StochasticDepth(0.1)(jnp.ones((2, 3))), r"StochasticDepth: rngs must be given"),
    ],
)
def test_stochastic_depth_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "name, count",
    [
        ("EfficientNetB0", 16 - 7),  # blocks with a skip: all but each stage's first
        ("ConvNeXtTiny", 18),
    ],
)
def test_stochastic_depth_rates_and_modes(name, count):
    model = _zoo(name)
    layers = [n for _, n in nnx.iter_graph(model) if isinstance(n, StochasticDepth)]
    rates = [n.rate for n in layers]
    assert rates == sorted(rates) and rates[0] == 0.0
    # torchvision: ConvNeXt reaches its 0.1 at the last block; EfficientNet 0.2 * 15 / 16.
    assert rates[-1] == pytest.approx(0.1 if isinstance(model, ConvNeXt) else 0.2 * 15 / 16)
    model.eval()
    assert all(n.deterministic for n in layers)
    model.train()
    assert not any(n.deterministic for n in layers)
    if isinstance(model, EfficientNet):
        skips = [
            b
            for _, b in nnx.iter_graph(model)
            if isinstance(b, cj.models._efficientnet.MBConv) and b.use_res_connect
        ]
        assert len(skips) == count


def _model_constructors():
    import cnn_jax.models as models

    return [
        name
        for name in models.__all__
        if name[0].isupper() and name not in ("Summary", "SummaryRow")
    ]


@pytest.mark.parametrize("name", _model_constructors())
def test_constructors_have_real_signatures(name):
    constructor = getattr(cj.models, name)
    params = inspect.signature(constructor).parameters
    assert list(params)[0] == "num_classes", name
    assert (
        params["in_channels"].default == 3
        and params["in_channels"].kind is inspect.Parameter.KEYWORD_ONLY
    )
    assert params["rngs"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "args" not in params and "kwargs" not in params
    assert "num_classes" in inspect.getdoc(constructor) or constructor.__doc__


def test_variants_hide_their_fixed_arguments():
    params = inspect.signature(ResNet18).parameters
    assert "block" not in params and "stage_sizes" not in params and "width" in params
    assert "groups" not in inspect.signature(ResNeXt50_32x4d).parameters
    assert "config" not in inspect.signature(VGG16BN).parameters
    assert ResNet18.__name__ == "ResNet18" and "11,689,512" in ResNet18.__doc__
    with pytest.raises(TypeError, match=r"ResNet18: stage_sizes is fixed by this variant"):
        ResNet18(10, stage_sizes=(1, 1, 1, 1), rngs=nnx.Rngs(0))


def test_mixed_precision_bf16_compute_f32_params():
    model = _abstract(
        lambda: ResNet18(10, small_input=True, width=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    )
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.float32)
    }
    assert _out(model, (2, 16, 16, 3)).dtype == jnp.bfloat16


def test_train_and_eval_switch_every_batchnorm_and_dropout():
    model = _abstract(lambda: MobileNetV2(10, width_mult=0.25, rngs=nnx.Rngs(0)))
    nodes = [n for _, n in nnx.iter_graph(model) if isinstance(n, (nnx.BatchNorm, nnx.Dropout))]
    assert sum(isinstance(n, nnx.Dropout) for n in nodes) == 1 and len(nodes) > 40
    model.eval()
    assert all(
        n.use_running_average if isinstance(n, nnx.BatchNorm) else n.deterministic for n in nodes
    )
    model.train()
    assert not any(
        n.use_running_average if isinstance(n, nnx.BatchNorm) else n.deterministic for n in nodes
    )


@pytest.fixture(scope="module")
def tiny_cnn():
    # An "rbg" key: threefry's hash makes every new weight shape a slow compile on CPU.
    return SimpleCNN(4, in_channels=1, width=2, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))


def test_train_step_lowers_the_loss(tiny_cnn):
    model = nnx.clone(tiny_cnn)
    model.train()
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((16, 8, 8, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 4, 16))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, x, y)) for _ in range(15)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    # Training moved the parameters and the BatchNorm statistics of the clone only.
    assert not np.allclose(np.asarray(model.fc.kernel[...]), np.asarray(tiny_cnn.fc.kernel[...]))
    np.testing.assert_array_equal(np.asarray(tiny_cnn.layers[0].layers[1].mean[...]), np.zeros(2))


def test_eval_mode_is_deterministic_and_per_example(tiny_cnn):
    model = nnx.clone(tiny_cnn)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 1)).astype(np.float32))
    fwd = nnx.jit(lambda m, x: m(x))
    model.train()
    train_out = fwd(model, x)
    mean_after_train = np.asarray(model.layers[0].layers[1].mean[...]).copy()
    assert not np.allclose(mean_after_train, 0.0)  # batch statistics were accumulated
    model.eval()
    a = fwd(model, x)
    b = fwd(model, jnp.concatenate([x[2:], x[:2]]))
    np.testing.assert_allclose(
        np.asarray(a), np.asarray(jnp.concatenate([b[2:], b[:2]])), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(model.layers[0].layers[1].mean[...]), mean_after_train)
    assert not np.allclose(np.asarray(train_out), np.asarray(a), atol=1e-3)


# Each row: a model, its constructor arguments (num_classes=10 unless given), the error.
@pytest.mark.parametrize(
    "model, kwargs, exc, match",
    [
        (LeNet5, dict(num_classes=0), ValueError, r"LeNet5: num_classes must be >= 1, got 0"),
        (LeNet5, dict(input_size=15), ValueError, r"LeNet5: input_size must be at least 16x16"),
        (
            LeNet5,
            dict(activation="gelu"),
            ValueError,
            r"LeNet5: activation must be one of \('relu', 'tanh'\), got 'gelu'",
        ),
        (
            LeNet5,
            dict(pooling="min"),
            ValueError,
            r"LeNet5: pooling must be one of \('max', 'avg'\), got 'min'",
        ),
        (SimpleCNN, dict(num_classes=10.0), TypeError, r"SimpleCNN: num_classes must be an int"),
        (SimpleCNN, dict(width=0), ValueError, r"SimpleCNN: width must be >= 1"),
        (
            ResNet,
            dict(block=nnx.Linear),
            ValueError,
            r"ResNet: block must be BasicBlock or Bottleneck",
        ),
        (
            ResNet,
            dict(stage_sizes=(2, 2, 2)),
            ValueError,
            r"ResNet: stage_sizes must be 4 ints, got \(2, 2, 2\)",
        ),
        (
            ResNet,
            dict(stage_sizes=(2, 0, 2, 2)),
            ValueError,
            r"ResNet: stage_sizes must be >= 1, got 0",
        ),
        (ResNet18, dict(small_input=1), TypeError, r"ResNet: small_input must be a bool, got 1"),
        (ResNet50, dict(in_channels=0), ValueError, r"ResNet: in_channels must be >= 1, got 0"),
        (
            MobileNetV2,
            dict(width_mult=0),
            ValueError,
            r"MobileNetV2: width_mult must be a positive number, got 0",
        ),
        (
            MobileNetV2,
            dict(dropout=1.0),
            ValueError,
            r"MobileNetV2: dropout must be in \[0, 1\), got 1.0",
        ),
        (UNet, dict(num_classes=2, depth=0), ValueError, r"UNet: depth must be >= 1, got 0"),
        (UNet, dict(num_classes=2, base_width="8"), TypeError, r"UNet: base_width must be an int"),
        (
            ResNet,
            dict(groups=32),
            ValueError,
            r"ResNet: groups and width_per_group must be 1 and 64 with BasicBlock, got 32 and 64",
        ),
        (
            ResNet50,
            dict(width_per_group=0),
            ValueError,
            r"ResNet: width_per_group must be >= 1, got 0",
        ),
        (AlexNet, dict(dropout=1), ValueError, r"AlexNet: dropout must be in \[0, 1\), got 1"),
        (AlexNet, dict(hidden=0), ValueError, r"AlexNet: hidden must be >= 1, got 0"),
        (
            VGG,
            dict(config=(64, "X")),
            ValueError,
            r"VGG: config must be a sequence of positive ints and 'M', got \(64, 'X'\)",
        ),
        (VGG, dict(batch_norm=1), TypeError, r"VGG: batch_norm must be a bool, got 1"),
        (
            EfficientNet,
            dict(width_mult=0),
            ValueError,
            r"EfficientNet: width_mult must be a positive number, got 0",
        ),
        (
            EfficientNetB0,
            dict(stochastic_depth_prob=1.0),
            ValueError,
            r"EfficientNet: stochastic_depth_prob must be in \[0, 1\), got 1.0",
        ),
        (
            ConvNeXt,
            dict(depths=(1, 1), dims=(8,)),
            ValueError,
            r"ConvNeXt: depths and dims must have the same length, got \(1, 1\) and \(8,\)",
        ),
        (
            ConvNeXt,
            dict(dims=()),
            ValueError,
            r"ConvNeXt: dims must be a non-empty sequence of ints, got \(\)",
        ),
    ],
)
def test_constructor_errors(model, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        model(**{"num_classes": 10, **kwargs}, rngs=nnx.Rngs(0))


def test_input_errors():
    unet = _abstract(lambda: UNet(2, in_channels=1, depth=2, base_width=2, rngs=nnx.Rngs(0)))
    with pytest.raises(
        ValueError,
        match=r"UNet: x must be \(N, H, W, C\) with H and W divisible "
        r"by 2\*\*depth=4, got x.shape=\(1, 10, 8, 1\)",
    ):
        _out(unet, (1, 10, 8, 1))
    lenet = _abstract(lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)))
    with pytest.raises(
        ValueError,
        match=r"LeNet5: x must be \(N, H, W, C\) with \(H, W\) = "
        r"input_size=\(32, 32\), got x.shape=\(1, 28, 28, 1\)",
    ):
        _out(lenet, (1, 28, 28, 1))
    cnn = _abstract(lambda: SimpleCNN(10, in_channels=1, width=2, rngs=nnx.Rngs(0)))
    with pytest.raises(
        ValueError,
        match=r"SimpleCNN: x must be \(N, H, W, C\) with H, W >= 8 "
        r"\(three 2x2 pools\), got x.shape=\(1, 4, 8, 1\)",
    ):
        _out(cnn, (1, 4, 8, 1))


@pytest.mark.parametrize(
    "constructor, shape, match",
    [
        (
            lambda: AlexNet(10, width=8, hidden=8, rngs=nnx.Rngs(0)),
            (1, 62, 64, 3),
            r"AlexNet: x must be \(N, H, W, C\) with H, W >= 63, got x.shape=\(1, 62, 64, 3\)",
        ),
        (
            lambda: VGG11(10, width=8, hidden=8, rngs=nnx.Rngs(0)),
            (1, 16, 32, 3),
            r"VGG: x must be \(N, H, W, C\) with H, W >= 32, got x.shape=\(1, 16, 32, 3\)",
        ),
        (
            lambda: ConvNeXt(10, depths=(1, 1), dims=(8, 16), rngs=nnx.Rngs(0)),
            (1, 4, 8, 3),
            r"ConvNeXt: x must be \(N, H, W, C\) with H, W >= 8, got x.shape=\(1, 4, 8, 3\)",
        ),
    ],
)
def test_new_model_input_errors(constructor, shape, match):
    with pytest.raises(ValueError, match=match):
        _out(_abstract(constructor), shape)


def test_public_names():
    import cnn_jax.models as models

    assert set(models.__all__) >= {
        "LeNet5",
        "SimpleCNN",
        "ResNet18",
        "ResNet34",
        "ResNet50",
        "MobileNetV2",
        "UNet",
        "load_torch_state_dict",
        "summary",
        "AlexNet",
        "VGG11",
        "VGG11BN",
        "VGG16",
        "VGG16BN",
        "EfficientNetB0",
        "ConvNeXtTiny",
        "ResNeXt50_32x4d",
        "WideResNet50_2",
    }
    assert all(hasattr(models, name) for name in models.__all__)
    assert BasicBlock.expansion == 1
