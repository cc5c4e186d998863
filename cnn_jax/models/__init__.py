"""Ready-made CNNs on :mod:`cnn_jax.nn`: ``Model(num_classes, *, in_channels=3, ..., rngs)``.

Inputs are channels_last ``(N, H, W, C)``; ``model.train()`` / ``model.eval()`` switch
BatchNorm (batch vs running statistics) and dropout. Layer names follow torchvision,
so :func:`load_torch_state_dict` loads PyTorch weights; :func:`summary` tabulates a
model and ``cnn_jax.receptive_field(model)`` reads its main path.
"""

from cnn_jax.models._lenet import LeNet5 as LeNet5
from cnn_jax.models._mobilenet import MobileNetV2 as MobileNetV2
from cnn_jax.models._resnet import ResNet as ResNet
from cnn_jax.models._resnet import ResNet18 as ResNet18
from cnn_jax.models._resnet import ResNet34 as ResNet34
from cnn_jax.models._resnet import ResNet50 as ResNet50
from cnn_jax.models._simple import SimpleCNN as SimpleCNN
from cnn_jax.models._summary import Summary as Summary
from cnn_jax.models._summary import SummaryRow as SummaryRow
from cnn_jax.models._summary import summary as summary
from cnn_jax.models._torch import load_torch_state_dict as load_torch_state_dict
from cnn_jax.models._unet import UNet as UNet

__all__ = [
    "LeNet5", "MobileNetV2", "ResNet", "ResNet18", "ResNet34", "ResNet50", "SimpleCNN",
    "Summary", "SummaryRow", "UNet", "load_torch_state_dict", "summary",
]
