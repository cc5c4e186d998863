"""PyTorch twins of the benchmarked cnn_jax models (same layers, same parameter count).

torchvision's models where torchvision is importable (the GPU image has it), else
the hand-written ones of ``tests/_torchvision_ref.py`` (torchvision's code, its module
names kept); cnn_jax's U-Net has no torchvision counterpart: always the hand-written one.
"""

from __future__ import annotations


def _ref():
    from tests import _torchvision_ref

    return _torchvision_ref


def _torchvision():
    try:
        import torchvision

        return torchvision
    except Exception:  # noqa: BLE001 - absent, or built for another torch: hand-written
        return None


def resnet(depth: int, num_classes: int, *, small_input: bool = False):
    """torchvision's ResNet-18/50; ``small_input``: the CIFAR stem (3x3/1 conv, no max
    pool), as ``cnn_jax.models.ResNet(small_input=True)``."""
    import torch.nn as nn

    tv = _torchvision()
    if tv is not None:
        model = {18: tv.models.resnet18, 50: tv.models.resnet50}[depth](num_classes=num_classes)
        if small_input:
            model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        return model, "torchvision"
    ref = _ref()
    block = ref.BasicBlock if depth == 18 else ref.Bottleneck
    layers = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    return (
        ref.ResNet(block, layers, num_classes=num_classes, small_input=small_input),
        "tests/_torchvision_ref.py",
    )


def mobilenet_v2(num_classes: int, width_mult: float = 1.0):
    tv = _torchvision()
    if tv is not None:
        return tv.models.mobilenet_v2(num_classes=num_classes, width_mult=width_mult), "torchvision"
    return _ref().MobileNetV2(num_classes, width_mult=width_mult), "tests/_torchvision_ref.py"


def unet(num_classes: int, in_channels: int, base_width: int, depth: int):
    """cnn_jax's UNet (``tests/_torchvision_ref.py``'s twin, ReLUs out of place)."""
    return (
        _ref().UNet(num_classes, in_channels, base_width, depth, inplace=False),
        "tests/_torchvision_ref.py",
    )
