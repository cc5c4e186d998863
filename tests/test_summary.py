"""cnn_jax.summary: numbers derived by hand on LeNet-5 and small nets, published totals.

Models are built abstractly (``nnx.eval_shape``) and ``summary`` itself only traces,
so nothing here compiles.
"""

import numpy as np
import pytest
from flax import nnx

import cnn_jax as cj
from cnn_jax.models import LeNet5, MobileNetV2, ResNet, ResNet18, SimpleCNN, UNet, summary


def _abstract(constructor):
    return nnx.eval_shape(constructor)


@pytest.fixture(scope="module")
def lenet_summary():
    return summary(_abstract(lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0))), (32, 32, 1))


def test_top_level_export():
    assert cj.summary is summary
    assert "summary" in cj.__all__


def test_lenet5_rows_by_hand(lenet_summary):
    s = lenet_summary
    assert [r.name for r in s.rows] == ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2", "fc3"]
    assert [r.type for r in s.rows] == [
        "Conv",
        "MaxPool",
        "Conv",
        "MaxPool",
        "Linear",
        "Linear",
        "Linear",
    ]
    # 32 - 5 + 1 = 28; 28 / 2 = 14; 14 - 5 + 1 = 10; 10 / 2 = 5.
    assert [r.output_shape for r in s.rows] == [
        (28, 28, 6),
        (14, 14, 6),
        (10, 10, 16),
        (5, 5, 16),
        (120,),
        (84,),
        (10,),
    ]
    # weights + biases: 5*5*1*6 + 6, 5*5*6*16 + 16, 400*120 + 120, 120*84 + 84, 84*10 + 10
    assert [r.params for r in s.rows] == [156, 0, 2416, 0, 48120, 10164, 850]
    # 2 * (output elements) * (multiply-adds per output element)
    flops = [
        2 * 28 * 28 * 6 * (1 * 5 * 5),
        0,
        2 * 10 * 10 * 16 * (6 * 5 * 5),
        0,
        2 * 400 * 120,
        2 * 120 * 84,
        2 * 84 * 10,
    ]
    assert [r.flops for r in s.rows] == flops
    assert s.total_flops == sum(flops) == 833_040
    assert s.total_params == 61_706
    assert s.input_shape == (1, 32, 32, 1) and s.output_shape == (10,)


def test_lenet5_receptive_fields_by_hand(lenet_summary):
    # size grows by (k - 1) * jump, jump multiplies by the stride:
    # conv5: 1 + 4 = 5 (jump 1); pool2: 5 + 1 = 6 (jump 2); conv5: 6 + 4*2 = 14;
    # pool2: 14 + 1*2 = 16 (jump 4). Dense layers have no spatial field.
    rf = [r.receptive_field for r in lenet_summary.rows]
    assert rf == [
        ((5, 5), (1, 1)),
        ((6, 6), (2, 2)),
        ((14, 14), (2, 2)),
        ((16, 16), (4, 4)),
        None,
        None,
        None,
    ]


def test_str_is_a_table(lenet_summary):
    text = str(lenet_summary)
    assert "conv1 (Conv)" in text and "fc3 (Linear)" in text
    assert "Total params: 61,706" in text
    assert "833,040" in text
    line = next(t for t in text.splitlines() if t.startswith("conv2 (Conv)"))
    assert "(10, 10, 16)" in line and "2,416" in line and "14, 2" in line
    assert lenet_summary["fc1"].params == 48_120
    with pytest.raises(KeyError):
        lenet_summary["nope"]


def test_nested_containers_sum_their_children():
    model = _abstract(lambda: SimpleCNN(10, in_channels=1, width=2, rngs=nnx.Rngs(0)))
    s = summary(model, (8, 8, 1))
    first = s["layers.0"]
    assert first.type == "Sequential" and first.depth == 0
    assert s["layers.0.0"].depth == 1 and s["layers.0.1"].type == "BatchNorm"
    # bias-free 3x3 conv 1 -> 2 channels (18) + BatchNorm scale and bias (4)
    assert first.params == 18 + 4 == s["layers.0.0"].params + s["layers.0.1"].params
    assert first.flops == s["layers.0.0"].flops == 2 * 8 * 8 * 2 * (1 * 9)
    # MACs per layer = H * W * C_out * C_in * 9; sizes 8, 8, 8, 8 | 4, 4 | 2, 2 | 1, 1,
    # widths 2, 2, 2, 2 | 4, 4 | 8, 8 | 16, 16 (doubling after the pools), fc 16 -> 10.
    macs = (
        64 * 2 * 1 * 9
        + 3 * 64 * 2 * 2 * 9
        + 16 * 4 * 2 * 9
        + 16 * 4 * 4 * 9
        + 4 * 8 * 4 * 9
        + 4 * 8 * 8 * 9
        + 1 * 16 * 8 * 9
        + 1 * 16 * 16 * 9
        + 16 * 10
    )
    assert s.total_flops == 2 * macs
    assert s.output_shape == (10,)
    # 10 3x3 convs and three 2x2/2 pools: 9 (four convs) -> 10 -> 18 -> 20 -> 36 -> 40 -> 72
    assert s["layers.9"].receptive_field == ((72, 72), (8, 8))


def test_shortcut_branch_has_no_main_path_field():
    model = _abstract(
        lambda: ResNet(10, stage_sizes=(1, 1, 1, 1), width=4, small_input=True, rngs=nnx.Rngs(0))
    )
    s = summary(model, (32, 32, 3))
    # 3x3 stem: 3; layer1: 5, 7; layer2 conv1 (stride 2): 9 (jump 2), conv2: 13.
    assert s["layer1.0"].receptive_field == ((7, 7), (1, 1))
    assert s["layer2.0.conv1"].receptive_field == ((9, 9), (2, 2))
    assert s["layer2.0.bn1"].receptive_field == ((9, 9), (2, 2))
    assert s["layer2.0"].receptive_field == ((13, 13), (2, 2))
    for name in ("layer2.0.downsample", "layer2.0.downsample.0", "layer2.0.downsample.1"):
        assert s[name].receptive_field is None
    # The projection's FLOPs count: 2 * 16 * 16 * 8 * 4 (1x1 conv, stride 2).
    assert s["layer2.0.downsample.0"].flops == 2 * 16 * 16 * 8 * 4
    assert s["layer2.0"].flops == sum(
        s[f"layer2.0.{n}"].flops for n in ("downsample", "conv1", "conv2")
    )


@pytest.mark.parametrize(
    "constructor, gmacs",
    [
        # torchvision's documented GFLOPS (multiply-adds of convs and linears) at 224x224.
        (lambda: ResNet18(1000, rngs=nnx.Rngs(0)), 1.81),
        (lambda: MobileNetV2(1000, rngs=nnx.Rngs(0)), 0.30),
        (lambda: cj.models.AlexNet(1000, rngs=nnx.Rngs(0)), 0.71),
        (lambda: cj.models.VGG16(1000, rngs=nnx.Rngs(0)), 15.47),
        (lambda: cj.models.EfficientNetB0(1000, rngs=nnx.Rngs(0)), 0.39),
        (lambda: cj.models.ConvNeXtTiny(1000, rngs=nnx.Rngs(0)), 4.46),
        (lambda: cj.models.ResNeXt50_32x4d(1000, rngs=nnx.Rngs(0)), 4.23),
    ],
)
def test_published_totals(constructor, gmacs):
    s = summary(_abstract(constructor), (224, 224, 3))
    assert s.total_flops / 2 / 1e9 == pytest.approx(gmacs, abs=0.005)
    assert s.output_shape == (1000,)


def test_rows_are_in_execution_order():
    model = _abstract(
        lambda: ResNet(10, stage_sizes=(1, 1, 1, 1), width=4, small_input=True, rngs=nnx.Rngs(0))
    )
    names = [r.name for r in summary(model, (8, 8, 3)).rows]
    # torchvision's BasicBlock runs the residual branch, then the shortcut projection.
    block = [n for n in names if n.startswith("layer2.0.")]
    assert block == [
        "layer2.0.conv1",
        "layer2.0.bn1",
        "layer2.0.conv2",
        "layer2.0.bn2",
        "layer2.0.downsample",
        "layer2.0.downsample.0",
        "layer2.0.downsample.1",
    ]
    assert names[:3] == ["conv1", "bn1", "layer1.0"] and names[-2:] == ["avgpool", "fc"]


def test_model_state_is_left_unchanged():
    model = nnx.Sequential(nnx.BatchNorm(3, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
    model.train()
    count = int(model.layers[1].rngs.count[...])
    s = summary(model, (4, 4, 3))
    assert [r.type for r in s.rows] == ["BatchNorm", "Dropout"]
    # In train mode a real call would move the running mean towards the batch mean and
    # advance the dropout key; the traced copy's updates are dropped.
    np.testing.assert_array_equal(np.asarray(model.layers[0].mean[...]), np.zeros(3))
    assert int(model.layers[1].rngs.count[...]) == count
    assert model.layers[0].use_running_average is False


def test_errors():
    model = nnx.Sequential(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="summary: model must be an nnx.Module, got int"):
        summary(3, (4, 4, 3))
    with pytest.raises(TypeError, match=r"summary: input_shape must be a tuple of ints, got 4"):
        summary(model, 4)
    with pytest.raises(
        ValueError,
        match=r"summary: input_shape must hold positive ints, "
        r"got \(0, 4, 3\)",
    ):
        summary(model, (0, 4, 3))
    with pytest.raises(ValueError, match=r"summary: input_shape must hold positive ints"):
        summary(model, (4.0, 4, 3))


def test_unet_rows_and_resizing_layers():
    model = _abstract(lambda: UNet(2, in_channels=1, base_width=2, depth=1, rngs=nnx.Rngs(0)))
    s = summary(model, (8, 8, 1))
    assert s.total_params == 450 and s.output_shape == (8, 8, 2)
    # Contracting path: 3, 5; pool 6 (jump 2); 10, 14.
    assert s["down.1"].receptive_field == ((14, 14), (2, 2))
    # The 2x2/2 transposed conv: 2 * (4 * 4 input pixels) * (4 in * 2 out * 2 * 2) FLOPs,
    # outside the (kernel, stride) recursion, like the decoder after it.
    up = s["up.0"]
    assert up.output_shape == (8, 8, 2) and up.params == 34
    assert up.flops == 2 * 16 * 4 * 2 * 2 * 2
    assert up.receptive_field is None and s["up_conv.0.0.0"].receptive_field is None
    assert s["head"].flops == 2 * 64 * 2 * 2


class _Scaled(nnx.Module):
    def __init__(self, rngs):
        self.kernel = nnx.Param(nnx.initializers.ones(rngs.params(), (1, 1, 1, 3)))

    def __call__(self, x):
        return x * self.kernel[...]


class _ScaledTwice(_Scaled):
    def __call__(self, x):
        return 2 * super().__call__(x)


def test_super_call_and_generic_modules_give_one_row_each():
    model = nnx.Sequential(_Scaled(nnx.Rngs(0)), _ScaledTwice(nnx.Rngs(1)))
    s = summary(model, (2, 2, 3))
    assert [(r.name, r.type, r.depth, r.params) for r in s.rows] == [
        ("0", "_Scaled", 0, 3),
        ("1", "_ScaledTwice", 0, 3),
    ]
    # Without a main path or conv layers the field stays one pixel.
    assert s["1"].receptive_field == (1, 1) and s.total_params == 6
