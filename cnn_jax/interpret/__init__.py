"""See what a CNN looks at: class activation maps, attributions, receptive fields.

Every function takes an ``nnx.Module`` and arrays, is jit- and vmap-able, and leaves
the model unchanged (it runs on a copy; call ``model.eval()`` first). Layers are
named by their dotted path in the nnx graph (``"layer4"``, ``"features.8"``), as in
:func:`cnn_jax.summary`; :func:`layer_names` lists them.
"""

from cnn_jax.interpret._attribution import integrated_gradients as integrated_gradients
from cnn_jax.interpret._attribution import saliency as saliency
from cnn_jax.interpret._attribution import smooth_grad as smooth_grad
from cnn_jax.interpret._cam import grad_cam as grad_cam
from cnn_jax.interpret._cam import grad_cam_plus_plus as grad_cam_plus_plus
from cnn_jax.interpret._capture import features as features
from cnn_jax.interpret._capture import layer_names as layer_names
from cnn_jax.interpret._receptive import effective_receptive_field as effective_receptive_field

__all__ = [
    "effective_receptive_field",
    "features",
    "grad_cam",
    "grad_cam_plus_plus",
    "integrated_gradients",
    "layer_names",
    "saliency",
    "smooth_grad",
]
