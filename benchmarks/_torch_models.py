"""PyTorch twins of the benchmarked cnn_jax models (same layers, same parameter count).

torchvision's models where torchvision is importable (the GPU image has it), else
the hand-written ones of ``tests/_torchvision_ref.py`` (torchvision's code, its module
names kept); cnn_jax's U-Net has no torchvision counterpart and is written here.
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
    return (ref.ResNet(block, layers, num_classes=num_classes, small_input=small_input),
            "tests/_torchvision_ref.py")


def mobilenet_v2(num_classes: int, width_mult: float = 1.0):
    tv = _torchvision()
    if tv is not None:
        return tv.models.mobilenet_v2(num_classes=num_classes, width_mult=width_mult), "torchvision"
    return _ref().MobileNetV2(num_classes, width_mult=width_mult), "tests/_torchvision_ref.py"


def unet(num_classes: int, in_channels: int, base_width: int, depth: int):
    """cnn_jax's UNet: per level a double 3x3 conv-BN-ReLU and a 2x2 max pool; per
    decoder level a 2x2/2 transposed conv, concatenation with the skip, a double conv;
    a 1x1 head."""
    import torch
    from torch import nn

    def double(i, o):
        def cba(a, b):
            return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]

        return nn.Sequential(*cba(i, o), *cba(o, o))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base_width * 2**i for i in range(depth + 1)]
            self.down = nn.ModuleList(double(i, o) for i, o in
                                      zip([in_channels] + widths[:-1], widths))
            self.up = nn.ModuleList(nn.ConvTranspose2d(2 * w, w, 2, stride=2)
                                    for w in reversed(widths[:-1]))
            self.up_conv = nn.ModuleList(double(2 * w, w) for w in reversed(widths[:-1]))
            self.head = nn.Conv2d(base_width, num_classes, 1)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(x)
                if i < depth:
                    skips.append(x)
                    x = nn.functional.max_pool2d(x, 2)
            for up, conv, skip in zip(self.up, self.up_conv, reversed(skips)):
                x = conv(torch.cat([skip, up(x)], dim=1))
            return self.head(x)

    return UNet(), "benchmarks/_torch_models.py"
