"""StableHLO export with ``jax.export``: a serialized program that needs only jax to run.

The artifact holds the model's forward pass in eval mode with its weights as constants;
``jax.export.deserialize`` turns it back into an ``Exported`` whose ``call`` runs it
from any JAX program (jitted, vmapped, on the platforms it was lowered for), with no
cnn_jax class involved.
"""

from __future__ import annotations

import jax

from cnn_jax.export._trace import check_batch, check_input_shape, inference_function, input_spec


def export_stablehlo(
    model,
    input_shape,
    *,
    batch: int | None = None,
    platforms: tuple[str, ...] | None = None,
    path: str | None = None,
) -> jax.export.Exported:
    """Lower ``model`` (inference: eval mode) to StableHLO with ``jax.export``.

    Args:
      model: an ``nnx.Module`` called as ``model(x)`` on ``(N, H, W, C)`` input.
      input_shape: ``(H, W, C)``: the input's size and channels.
      batch: the batch size ``N``; None (default) makes it a symbolic dimension ``N``:
        one artifact runs every batch size.
      platforms: platforms to lower for, e.g. ``("cpu", "cuda")`` (default: the
        default backend's).
      path: where to write ``exported.serialize()`` (None: not written).

    Returns:
      ``jax.export.Exported``: ``exported.call(x)`` with float32 ``x`` of shape
      ``(N, H, W, C)`` gives the model's output; ``exported.serialize()`` the bytes.

    >>> exp = export_stablehlo(LeNet5(10, in_channels=1, rngs=nnx.Rngs(0)), (32, 32, 1))
    >>> exp.in_avals[0].shape, exp.out_avals[0].shape
    ((N, 32, 32, 1), (N, 10))
    """
    op = "export_stablehlo"
    shape = check_input_shape(input_shape, op)
    batch = check_batch(batch, op)
    forward = inference_function(model, op)
    exported = jax.export.export(jax.jit(forward), platforms=platforms)(input_spec(shape, batch))
    if path is not None:
        with open(path, "wb") as f:
            f.write(exported.serialize())
    return exported


def load_stablehlo(path: str) -> jax.export.Exported:
    """Read a file written by :func:`export_stablehlo` (``jax.export.deserialize``).

    >>> load_stablehlo("model.stablehlo").call(x)  # doctest: +SKIP
    """
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))
