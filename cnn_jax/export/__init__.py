"""Take a trained model anywhere: StableHLO, ONNX, and PyTorch weights.

* :func:`export_stablehlo`: ``jax.export`` of the forward pass with its weights, a
  serialized artifact that ``jax.export.deserialize`` (or :func:`load_stablehlo`) runs
  without cnn_jax's classes, with a symbolic batch dimension by default;
* :func:`export_onnx`: an ONNX graph (opset 17) for onnxruntime, TensorRT, mobile and
  C++ runtimes (needs ``pip install 'cnn-jax[export]'``);
* :func:`export_torch`: the weights as a torchvision-named PyTorch ``state_dict``, as
  ``.pt`` and ``.safetensors`` (:func:`save_torch_state_dict` gives the dict itself);
* :func:`export_run`: any of those for a run folder (``cnn-jax export``).

Exports are for inference: the model runs in eval mode (BatchNorm's running
statistics, no dropout). The input is cnn_jax's: float32 ``(N, H, W, C)``, channels
last; a PyTorch model loaded with the exported weights takes ``(N, C, H, W)`` as
PyTorch does.
"""

from cnn_jax.export._onnx import export_onnx as export_onnx
from cnn_jax.export._run import FORMATS as FORMATS
from cnn_jax.export._run import export_run as export_run
from cnn_jax.export._stablehlo import export_stablehlo as export_stablehlo
from cnn_jax.export._stablehlo import load_stablehlo as load_stablehlo
from cnn_jax.export._torch import export_torch as export_torch
from cnn_jax.models._torch import save_torch_state_dict as save_torch_state_dict

__all__ = [
    "FORMATS",
    "export_onnx",
    "export_run",
    "export_stablehlo",
    "export_torch",
    "load_stablehlo",
    "save_torch_state_dict",
]
