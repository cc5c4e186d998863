"""Stochastic depth (Huang et al. 2016): drop a residual branch for whole examples.

A layer of its own, like ``nnx.Dropout``, so ``model.train()`` / ``model.eval()`` switch
it through its ``deterministic`` attribute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax._checks import check_bool

MODES = ("row", "batch")


class StochasticDepth(nnx.Module):
    """Randomly zero a residual branch, as ``torchvision.ops.StochasticDepth``.

    In training (``deterministic=False``) the input is multiplied by a Bernoulli mask
    that keeps with probability ``1 - rate`` and is rescaled by ``1 / (1 - rate)``:
    one draw per example (``mode="row"``, mask shape ``(N, 1, ..., 1)``) or one for
    the whole batch (``mode="batch"``). In evaluation, or with ``rate == 0``, it is
    the identity. Put it on the residual branch only: ``x + StochasticDepth(f(x))``.

    Args:
      rate: probability of dropping the branch, in ``[0, 1]``.
      mode: ``"row"`` (per example) or ``"batch"``.
      deterministic: start in evaluation mode (``.train()`` / ``.eval()`` change it).
      rng_collection: the ``nnx.Rngs`` stream the masks are drawn from.
      rngs: ``nnx.Rngs``; needed to draw masks in training mode.

    >>> layer = StochasticDepth(0.5, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 2, 2, 3))).shape
    (4, 2, 2, 3)
    """

    def __init__(
        self,
        rate: float,
        mode: str = "row",
        *,
        deterministic: bool = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs | None = None,
    ):
        op = "StochasticDepth"
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"{op}: rate must be a number in [0, 1], got {rate!r}")
        if mode not in MODES:
            raise ValueError(f"{op}: mode must be one of {MODES}, got {mode!r}")
        self.rate = float(rate)
        self.mode = mode
        self.deterministic = check_bool(deterministic, "deterministic", op)
        if isinstance(rngs, nnx.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif rngs is None:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(f"{op}: rngs must be an nnx.Rngs or None, got {type(rngs).__name__}")

    def __call__(self, x):
        if self.deterministic or self.rate == 0.0:
            return x
        if self.rngs is None:
            raise ValueError(
                "StochasticDepth: rngs must be given at construction to drop "
                "branches in training mode (or call .eval())"
            )
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.mode == "row" else (1,) * x.ndim
        mask = jax.random.bernoulli(self.rngs(), keep, shape)
        if keep > 0.0:
            return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))
        return x * mask.astype(x.dtype)
