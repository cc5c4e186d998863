"""Ready-made CNNs on :mod:`cnn_jax.nn`: ``Model(num_classes, *, in_channels=3, ..., rngs)``.

Inputs are channels_last ``(N, H, W, C)``; ``model.train()`` / ``model.eval()`` switch
BatchNorm (batch vs running statistics), dropout and stochastic depth. Layer names
follow torchvision, so :func:`load_torch_state_dict` loads PyTorch weights;
:func:`summary` tabulates a model and ``cnn_jax.receptive_field(model)`` reads its main
path. Each family is one class (``ResNet``, ``VGG``, ``EfficientNet``, ``ConvNeXt``)
with its published variants as factories (``ResNet50``, ``VGG16BN``, ...).
"""

from cnn_jax.models._alexnet import AlexNet as AlexNet
from cnn_jax.models._convnext import ConvNeXt as ConvNeXt
from cnn_jax.models._convnext import ConvNeXtTiny as ConvNeXtTiny
from cnn_jax.models._digits import DigitsCNN as DigitsCNN
from cnn_jax.models._efficientnet import EfficientNet as EfficientNet
from cnn_jax.models._efficientnet import EfficientNetB0 as EfficientNetB0
from cnn_jax.models._lenet import LeNet5 as LeNet5
from cnn_jax.models._mobilenet import MobileNetV2 as MobileNetV2
from cnn_jax.models._resnet import ResNet as ResNet
from cnn_jax.models._resnet import ResNet18 as ResNet18
from cnn_jax.models._resnet import ResNet34 as ResNet34
from cnn_jax.models._resnet import ResNet50 as ResNet50
from cnn_jax.models._resnet import ResNeXt50_32x4d as ResNeXt50_32x4d
from cnn_jax.models._resnet import WideResNet50_2 as WideResNet50_2
from cnn_jax.models._simple import SimpleCNN as SimpleCNN
from cnn_jax.models._summary import Summary as Summary
from cnn_jax.models._summary import SummaryRow as SummaryRow
from cnn_jax.models._summary import summary as summary
from cnn_jax.models._torch import load_torch_state_dict as load_torch_state_dict
from cnn_jax.models._torch import save_torch_state_dict as save_torch_state_dict
from cnn_jax.models._unet import UNet as UNet
from cnn_jax.models._vgg import VGG as VGG
from cnn_jax.models._vgg import VGG11 as VGG11
from cnn_jax.models._vgg import VGG11BN as VGG11BN
from cnn_jax.models._vgg import VGG16 as VGG16
from cnn_jax.models._vgg import VGG16BN as VGG16BN

__all__ = [
    "DigitsCNN",
    "AlexNet",
    "ConvNeXt",
    "ConvNeXtTiny",
    "EfficientNet",
    "EfficientNetB0",
    "LeNet5",
    "MobileNetV2",
    "ResNeXt50_32x4d",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "SimpleCNN",
    "Summary",
    "SummaryRow",
    "UNet",
    "VGG",
    "VGG11",
    "VGG11BN",
    "VGG16",
    "VGG16BN",
    "WideResNet50_2",
    "load_torch_state_dict",
    "save_torch_state_dict",
    "summary",
]
