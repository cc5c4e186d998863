"""Test helpers that keep XLA compilations few: abstract models filled with PyTorch weights.

Drawing initial weights compiles one small program per parameter shape, which is most
of a tiny model's test time on a loaded 2-core machine. Tests that overwrite every
weight anyway build the model abstractly (``nnx.eval_shape``) and load the weights.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.models import load_torch_state_dict


def from_torch(constructor, torch_module):
    """``constructor()`` built abstractly, then given ``torch_module``'s weights (strict)."""
    model = nnx.eval_shape(constructor)
    load_torch_state_dict(model, torch_module.state_dict())
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.RngStream):  # dropout keys: not weights, give them values
            node.key.set_value(jax.random.key(0))
            node.count.set_value(jnp.zeros((), jnp.uint32))
    abstract = [x for x in jax.tree.leaves(nnx.state(model)) if isinstance(x, jax.ShapeDtypeStruct)]
    assert not abstract, "every weight must come from the state_dict"
    return model


def apply(model, x):
    """``model(x)`` as one jitted program (model state updates, e.g. BatchNorm, kept)."""
    return nnx.jit(lambda m, x: m(x))(model, x)
