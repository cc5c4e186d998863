"""The public surface promised by the API contract: names, re-exports, layers, models."""

import inspect

import cnn_jax as cj

OPS = [
    "conv",
    "depthwise_conv",
    "separable_conv",
    "conv_transpose",
    "conv_input_grad",
    "conv_kernel_grad",
    "pad",
    "conv_output_shape",
    "conv_transpose_output_shape",
    "receptive_field",
    "max_pool",
    "min_pool",
    "avg_pool",
    "sum_pool",
    "lp_pool",
    "global_avg_pool",
    "global_max_pool",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "upsample",
    "pixel_shuffle",
    "pixel_unshuffle",
    "unfold",
    "fold",
]
LAYERS = [
    "Conv",
    "ConvTranspose",
    "DepthwiseConv",
    "SeparableConv",
    "MaxPool",
    "MinPool",
    "AvgPool",
    "LpPool",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "Upsample",
    "PixelShuffle",
    "Residual",
    "BasicBlock",
    "Bottleneck",
    "SqueezeExcitation",
    "InvertedResidual",
    "StochasticDepth",
]
MODELS = [
    "DigitsCNN",
    "LeNet5",
    "SimpleCNN",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "MobileNetV2",
    "UNet",
    "AlexNet",
    "VGG11",
    "VGG11BN",
    "VGG16",
    "VGG16BN",
    "EfficientNetB0",
    "ConvNeXtTiny",
    "ResNeXt50_32x4d",
    "WideResNet50_2",
    "load_torch_state_dict",
]


def test_every_op_is_in_ops_and_reexported_at_top_level():
    for name in OPS:
        assert name in cj.ops.__all__, name
        assert getattr(cj, name) is getattr(cj.ops, name), name
        assert name in cj.__all__, name


def test_layers_models_and_summary_are_public():
    for name in LAYERS:
        assert name in cj.nn.__all__ and inspect.isclass(getattr(cj.nn, name)), name
    for name in MODELS:
        assert name in cj.models.__all__, name
    assert callable(cj.summary)


def test_signatures_match_the_contract():
    conv = inspect.signature(cj.conv).parameters
    assert list(conv)[:3] == ["x", "kernel", "bias"]
    assert {
        k: conv[k].default
        for k in ("stride", "padding", "dilation", "groups", "padding_mode", "flip", "layout")
    } == {
        "stride": 1,
        "padding": 0,
        "dilation": 1,
        "groups": 1,
        "padding_mode": "zeros",
        "flip": False,
        "layout": "channels_last",
    }
    pool = inspect.signature(cj.max_pool).parameters
    assert list(pool)[:3] == ["x", "window", "stride"] and pool["stride"].default is None
    assert pool["ceil_mode"].kind is inspect.Parameter.KEYWORD_ONLY
    layer = inspect.signature(cj.nn.Conv.__init__).parameters  # nnx's metaclass hides it
    assert list(layer)[1:4] == ["in_features", "out_features", "kernel_size"]
    assert layer["rngs"].kind is inspect.Parameter.KEYWORD_ONLY
