"""load_torch_state_dict: PyTorch networks and ours give the same logits with the same weights.

The PyTorch references (tests/_torchvision_ref.py) keep torchvision's module names and
are the oracle; weights and BatchNorm statistics are random so no layer is trivial.
"""

import _torchvision_ref as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _model_helpers import apply, from_torch
from flax import nnx

import cnn_jax as cj
from cnn_jax.models import LeNet5, MobileNetV2, ResNet, load_torch_state_dict
from cnn_jax.nn import BasicBlock, Bottleneck


def _to_cl(x):
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def _torch_logits(module, x_nchw):
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(x_nchw)).numpy()


def _assert_close(ours, theirs, rtol=1e-4):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert scale > 1e-3  # logits are not trivially zero
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize(
    "block, tblock, small_input, size, groups",
    [
        (BasicBlock, ref.BasicBlock, True, 16, {}),
        (Bottleneck, ref.Bottleneck, False, 32, {}),
        # ResNeXt (grouped 3x3 convs) and Wide ResNet (twice the inner width), reduced.
        (Bottleneck, ref.Bottleneck, True, 8, dict(groups=4, width_per_group=16)),
        (Bottleneck, ref.Bottleneck, True, 8, dict(width_per_group=128)),
    ],
)
def test_resnet_logits_match_torch(rng, block, tblock, small_input, size, groups):
    torch_model = ref.randomize_(
        ref.ResNet(tblock, (1, 1, 1, 1), num_classes=7, width=8, small_input=small_input, **groups)
    )
    model = from_torch(
        lambda: ResNet(
            7,
            block=block,
            stage_sizes=(1, 1, 1, 1),
            width=8,
            small_input=small_input,
            rngs=nnx.Rngs(0),
            **groups,
        ),
        torch_model,
    )
    model.eval()
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    _assert_close(apply(model, _to_cl(x)), _torch_logits(torch_model, x))


def test_resnet_state_dict_keys_are_torchvisions():
    torch_model = ref.ResNet(ref.BasicBlock, (2, 2, 2, 2), num_classes=10, width=4)
    # Strict loading succeeds only if every key on both sides is matched.
    model = from_torch(
        lambda: ResNet(10, block=BasicBlock, stage_sizes=(2, 2, 2, 2), width=4, rngs=nnx.Rngs(0)),
        torch_model,
    )
    np.testing.assert_array_equal(
        np.asarray(model.layer2[0].downsample.layers[0].kernel[...]),
        np.transpose(torch_model.layer2[0].downsample[0].weight.detach().numpy(), (2, 3, 1, 0)),
    )
    np.testing.assert_array_equal(
        np.asarray(model.fc.kernel[...]), torch_model.fc.weight.detach().numpy().T
    )


def test_mobilenet_v2_logits_match_torch(rng):
    torch_model = ref.randomize_(ref.MobileNetV2(num_classes=5, width_mult=0.25), seed=1)
    model = from_torch(lambda: MobileNetV2(5, width_mult=0.25, rngs=nnx.Rngs(0)), torch_model)
    model.eval()
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    _assert_close(apply(model, _to_cl(x)), _torch_logits(torch_model, x))
    # Dropout is the identity in eval mode; in train mode it zeroes ~20% and scales the
    # rest by 1 / 0.8, with a fresh mask per call.
    dropout = model.classifier.layers[0]
    ones = jnp.ones((4000,))
    np.testing.assert_array_equal(np.asarray(dropout(ones)), np.ones(4000))
    model.train()
    a, b = np.asarray(dropout(ones)), np.asarray(dropout(ones))
    assert set(np.unique(a)) <= {0.0, np.float32(1.25)}
    assert abs((a == 0).mean() - 0.2) < 0.03 and not np.array_equal(a, b)


@pytest.mark.parametrize(
    "name, torch_ctor, ours, size",
    [
        # Reduced widths keep these fast; the layer structure and names are torchvision's.
        (
            "alexnet",
            lambda: ref.AlexNet(6, width=8, hidden=32),
            lambda: cj.models.AlexNet(6, width=8, hidden=32, rngs=nnx.Rngs(0)),
            67,
        ),
        (
            "vgg11",
            lambda: ref.VGG("A", num_classes=6, width=4, hidden=16),
            lambda: cj.models.VGG11(6, width=4, hidden=16, rngs=nnx.Rngs(0)),
            32,
        ),
        (
            "vgg16_bn",
            lambda: ref.VGG("D", batch_norm=True, num_classes=6, width=4, hidden=16),
            lambda: cj.models.VGG16BN(6, width=4, hidden=16, rngs=nnx.Rngs(0)),
            32,
        ),
        (
            "efficientnet",
            lambda: ref.EfficientNet(6, width_mult=0.25, depth_mult=0.5),
            lambda: cj.models.EfficientNet(6, width_mult=0.25, depth_mult=0.5, rngs=nnx.Rngs(0)),
            32,
        ),
        (
            "convnext",
            lambda: ref.ConvNeXt((1, 1, 2, 1), (8, 16, 32, 64), num_classes=6),
            lambda: cj.models.ConvNeXt(
                6, depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), rngs=nnx.Rngs(0)
            ),
            32,
        ),
    ],
)
def test_zoo_logits_match_torch(rng, name, torch_ctor, ours, size):
    torch_model = ref.randomize_(torch_ctor(), seed=11)
    model = from_torch(ours, torch_model)  # strict: every key on both sides matched
    model.eval()
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    _assert_close(apply(model, _to_cl(x)), _torch_logits(torch_model, x))
    # And back: save_torch_state_dict gives the torch model's own state_dict.
    saved = cj.models.save_torch_state_dict(model)
    theirs = {
        k: v.numpy()
        for k, v in torch_model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert set(theirs) <= set(saved)
    for key, value in theirs.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)


def test_lenet5_flatten_order_matches_torch(rng):
    torch_model = ref.randomize_(ref.LeNet5(10, in_channels=1), seed=2)
    model = from_torch(lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)), torch_model)
    x = rng.standard_normal((3, 1, 32, 32)).astype(np.float32)
    _assert_close(apply(model, _to_cl(x)), _torch_logits(torch_model, x))


class _Decoder(nnx.Module):
    """Generic layers under PyTorch-style names: a grouped ConvTranspose, a channels_first conv."""

    def __init__(self, rngs):
        self.up = cj.nn.ConvTranspose(
            4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, rngs=rngs
        )
        self.proj = cj.nn.Conv(6, 3, (3, 3), padding=1, layout="channels_first", rngs=rngs)

    def __call__(self, x):
        y = self.up(x)
        return self.proj(jnp.transpose(y, (0, 3, 1, 2)))


class _TorchDecoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.proj = torch.nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return self.proj(self.up(x))


def test_generic_layers_conv_transpose_and_channels_first(rng):
    torch_model = ref.randomize_(_TorchDecoder(), seed=3)
    model = from_torch(lambda: _Decoder(nnx.Rngs(0)), torch_model)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    _assert_close(apply(model, _to_cl(x)), _torch_logits(torch_model, x))


def test_loaded_weights_do_not_alias_torch_memory():
    # PyTorch updates tensors in place (BatchNorm statistics, optimiser steps); a loaded
    # model must keep the values it was given, even while a jitted call still reads them.
    torch_model = ref.randomize_(ref.ResNet(ref.BasicBlock, (1, 1, 1, 1), 3, width=4), seed=9)
    model = from_torch(
        lambda: ResNet(3, stage_sizes=(1, 1, 1, 1), width=4, rngs=nnx.Rngs(0)), torch_model
    )
    before = torch_model.bn1.running_mean.clone().numpy()
    with torch.no_grad():
        torch_model.bn1.running_mean.add_(1.0)
        torch_model.conv1.weight.mul_(0.0)
    np.testing.assert_array_equal(np.asarray(model.bn1.mean[...]), before)
    assert np.abs(np.asarray(model.conv1.kernel[...])).max() > 0


def test_numpy_arrays_and_dtype_cast():
    torch_model = ref.LeNet5(10, in_channels=1)
    state = {k: v.double().numpy() for k, v in torch_model.state_dict().items()}
    model = _abstract_lenet()
    load_torch_state_dict(model, state)
    assert model.conv1.kernel[...].dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(model.conv1.kernel[...]),
        np.transpose(state["conv1.weight"], (2, 3, 1, 0)),
        rtol=1e-6,
    )


def test_num_batches_tracked_is_ignored_and_bn_stats_load():
    torch_model = ref.randomize_(ref.ResNet(ref.BasicBlock, (1, 1, 1, 1), 3, width=4), seed=4)
    state = torch_model.state_dict()
    assert "bn1.num_batches_tracked" in state
    model = from_torch(
        lambda: ResNet(3, stage_sizes=(1, 1, 1, 1), width=4, rngs=nnx.Rngs(0)), torch_model
    )
    np.testing.assert_array_equal(np.asarray(model.bn1.var[...]), state["bn1.running_var"].numpy())
    np.testing.assert_array_equal(np.asarray(model.bn1.scale[...]), state["bn1.weight"].numpy())


def _lenet_state():
    return dict(ref.LeNet5(10, in_channels=1).state_dict())


def _abstract_lenet():
    """No weights drawn: the load checks run before anything is written."""
    return nnx.eval_shape(lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)))


def test_missing_key_raises_and_leaves_model_unchanged():
    model = from_torch(
        lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)),
        ref.randomize_(ref.LeNet5(10, in_channels=1), seed=6),
    )
    before = np.asarray(model.conv1.kernel[...]).copy()
    state = _lenet_state()
    del state["fc2.bias"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['fc2.bias'\]"):
        load_torch_state_dict(model, state)
    np.testing.assert_array_equal(np.asarray(model.conv1.kernel[...]), before)


def test_unexpected_key_raises():
    state = _lenet_state()
    state["fc4.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['fc4.weight'\]"):
        load_torch_state_dict(_abstract_lenet(), state)


def test_shape_mismatch_names_the_key():
    state = _lenet_state()
    state["conv2.weight"] = torch.zeros(16, 6, 3, 3)
    with pytest.raises(
        ValueError,
        match=r"state_dict\['conv2.weight'\] must have shape "
        r"\(5, 5, 6, 16\).*got \(3, 3, 6, 16\)",
    ):
        load_torch_state_dict(_abstract_lenet(), state)


def test_non_strict_loads_the_matching_part():
    torch_model = ref.randomize_(ref.LeNet5(10, in_channels=1), seed=5)
    state = {k: v for k, v in torch_model.state_dict().items() if k.startswith("conv1")}
    state["extra.weight"] = torch.zeros(2)
    model = from_torch(
        lambda: LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)),
        ref.randomize_(ref.LeNet5(10, in_channels=1), seed=6),
    )
    fc1_before = np.asarray(model.fc1.kernel[...]).copy()
    load_torch_state_dict(model, state, strict=False)
    np.testing.assert_array_equal(np.asarray(model.conv1.bias[...]), state["conv1.bias"].numpy())
    np.testing.assert_array_equal(np.asarray(model.fc1.kernel[...]), fc1_before)


def test_bad_argument_types():
    model = _abstract_lenet()
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        load_torch_state_dict(model, [("conv1.weight", np.zeros(1))])
    with pytest.raises(TypeError, match="model must be an nnx.Module"):
        load_torch_state_dict(torch.nn.Linear(2, 2), {})
    state = _lenet_state()
    state["conv1.bias"] = object()
    with pytest.raises(TypeError, match=r"state_dict\['conv1.bias'\] must be an array"):
        load_torch_state_dict(model, state)


def _torch_double_conv(cin, cout):
    def cba(i, o):
        return torch.nn.Sequential(
            torch.nn.Conv2d(i, o, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(o),
            torch.nn.ReLU(),
        )

    return torch.nn.Sequential(cba(cin, cout), cba(cout, cout))


class _TorchUNet(torch.nn.Module):
    """The classic U-Net written independently in PyTorch, named like cnn_jax's UNet."""

    def __init__(self, num_classes, in_channels, base_width, depth):
        super().__init__()
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.down = torch.nn.ModuleList(
            _torch_double_conv(i, o) for i, o in zip([in_channels] + widths[:-1], widths)
        )
        self.up = torch.nn.ModuleList(
            torch.nn.ConvTranspose2d(2 * w, w, 2, stride=2) for w in reversed(widths[:-1])
        )
        self.up_conv = torch.nn.ModuleList(
            _torch_double_conv(2 * w, w) for w in reversed(widths[:-1])
        )
        self.head = torch.nn.Conv2d(base_width, num_classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = torch.nn.functional.max_pool2d(x, 2)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


def test_unet_logits_match_torch(rng):
    from cnn_jax.models import UNet

    torch_model = ref.randomize_(_TorchUNet(3, 2, 4, 2), seed=7)
    model = from_torch(
        lambda: UNet(3, in_channels=2, base_width=4, depth=2, rngs=nnx.Rngs(0)), torch_model
    )
    model.eval()
    x = rng.standard_normal((2, 2, 8, 12)).astype(np.float32)
    ours = apply(model, _to_cl(x))
    _assert_close(np.transpose(np.asarray(ours), (0, 3, 1, 2)), _torch_logits(torch_model, x))


class _Mixed(nnx.Module):
    """Other layer types the loader maps: SeparableConv, flax's own Conv, LayerNorm."""

    def __init__(self, rngs):
        self.sep = cj.nn.SeparableConv(4, 6, 3, padding=1, rngs=rngs)
        self.flax_conv = nnx.Conv(6, 5, (3, 3), padding="SAME", rngs=rngs)
        self.norm = nnx.LayerNorm(5, epsilon=1e-5, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.flax_conv(self.sep(x)))


class _TorchSeparable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.depthwise = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.pointwise = torch.nn.Conv2d(4, 6, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class _TorchMixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sep = _TorchSeparable()
        self.flax_conv = torch.nn.Conv2d(6, 5, 3, padding=1)
        self.norm = torch.nn.LayerNorm(5)

    def forward(self, x):
        y = self.flax_conv(self.sep(x))
        return self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_separable_flax_conv_and_layer_norm(rng):
    torch_model = ref.randomize_(_TorchMixed(), seed=8)
    model = from_torch(lambda: _Mixed(nnx.Rngs(0)), torch_model)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    ours = np.transpose(np.asarray(apply(model, _to_cl(x))), (0, 3, 1, 2))
    _assert_close(ours, _torch_logits(torch_model, x))


class _WithUnknownLayer(nnx.Module):
    def __init__(self, rngs):
        self.conv = cj.nn.Conv(1, 2, 3, rngs=rngs)
        self.embed = nnx.Embed(3, 2, rngs=rngs)


def test_layers_without_a_mapping_are_refused_when_strict():
    model = nnx.eval_shape(lambda: _WithUnknownLayer(nnx.Rngs(0)))
    state = {
        "conv.weight": np.zeros((2, 1, 3, 3), np.float32),
        "conv.bias": np.zeros(2, np.float32),
    }
    with pytest.raises(
        ValueError,
        match=r"every weight of the model must have a PyTorch "
        r"counterpart, but \['embed.embedding'\]",
    ):
        load_torch_state_dict(model, state)
    load_torch_state_dict(model, state, strict=False)
    np.testing.assert_array_equal(np.asarray(model.conv.bias[...]), np.zeros(2))


@pytest.mark.parametrize(
    "torch_ctor, ours",
    [
        (
            lambda: ref.ResNet(ref.Bottleneck, (3, 4, 6, 3)),
            lambda: cj.models.ResNet50(1000, rngs=nnx.Rngs(0)),
        ),
        (lambda: ref.MobileNetV2(), lambda: MobileNetV2(1000, rngs=nnx.Rngs(0))),
    ],
)
def test_full_size_torchvision_state_dicts_load(torch_ctor, ours):
    torch.manual_seed(0)
    torch_model = torch_ctor()
    state = torch_model.state_dict()
    model = from_torch(ours, torch_model)  # strict: every key on both sides matched
    n_torch = sum(p.numel() for p in torch_model.parameters())
    n_ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n_ours == n_torch
    key = "layer4.2.conv3.weight" if "fc.weight" in state else "features.17.conv.2.weight"
    assert key in state
