"""Data augmentation as pure, jittable functions of a PRNG key and a batch.

Every example draws its own randomness from ``fold_in(key, index)``, where
``index`` is the example's position in the data set: a batch split over 1, 8 or
64 devices (or several processes) is augmented exactly as it is on one device,
so the same seed gives the same run on any device count. The train step passes
``key = fold_in(key(seed), epoch)`` and the batch's global example indices.

Masks (per-pixel labels) get the same shift and flip as their images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _check(images, op: str):
    if images.ndim != 4:
        raise ValueError(f"{op}: images must be (N, H, W, C), got shape {images.shape}")


def _example_keys(key, n: int, index):
    """One key per example: ``fold_in(key, index[i])`` (``index`` defaults to 0..n-1)."""
    if index is None:
        index = jnp.arange(n, dtype=jnp.int32)
    if index.shape != (n,):
        raise ValueError(
            f"augment: index must have shape ({n},) (one per image), got {index.shape}"
        )
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def crop_offsets(key, n: int, padding: int, index=None):
    """The ``(n, 2)`` offsets ``(dy, dx)`` in ``[0, 2 * padding]`` that :func:`random_crop`
    draws: image ``i`` is the window at ``(dy, dx)`` of the zero-padded image, i.e.
    its content moves by ``(padding - dy, padding - dx)`` pixels."""
    keys = _example_keys(key, n, index)
    return jax.vmap(
        lambda k: jax.random.randint(jax.random.fold_in(k, 0), (2,), 0, 2 * padding + 1)
    )(keys)


def flip_draws(key, n: int, index=None):
    """The ``(n,)`` booleans that :func:`random_flip` draws (True: mirrored)."""
    keys = _example_keys(key, n, index)
    return jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 1), 0.5))(keys)


def random_crop(key, images, padding: int, masks=None, *, index=None):
    """Zero-pad every image by ``padding`` pixels and crop it back at a random offset.

    Args:
      key: a PRNG key.
      images: ``(N, H, W, C)``.
      padding: pixels added on each side before cropping (a Python int >= 0).
      masks: optional ``(N, H, W)`` per-pixel labels, cropped the same way (padded
        with 0, the background class).
      index: optional ``(N,)`` int global example indices; example ``i`` draws from
        ``fold_in(key, index[i])`` (default ``0..N-1``).

    Returns:
      ``images`` of the same shape (and ``masks`` when given), each shifted by up to
      ``padding`` pixels in each direction, the uncovered border filled with 0.

    >>> random_crop(jax.random.key(0), jnp.ones((2, 8, 8, 1)), 1).shape
    (2, 8, 8, 1)
    """
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"random_crop: padding must be an int >= 0, got {padding!r}")
    _check(images, "random_crop")
    if padding == 0:
        return images if masks is None else (images, masks)
    n, h, w, c = images.shape
    offsets = crop_offsets(key, n, padding, index)
    p = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    out = jax.vmap(lambda img, o: lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
        jnp.pad(images, p), offsets
    )
    if masks is None:
        return out
    out_m = jax.vmap(lambda m, o: lax.dynamic_slice(m, (o[0], o[1]), (h, w)))(
        jnp.pad(masks, p[:3]), offsets
    )
    return out, out_m


def random_flip(key, images, masks=None, *, index=None):
    """Flip each image left-right with probability 1/2.

    Args:
      key: a PRNG key.
      images: ``(N, H, W, C)``.
      masks: optional ``(N, H, W)`` per-pixel labels, flipped with their images.
      index: optional ``(N,)`` global example indices (see :func:`random_crop`).

    Returns:
      ``images`` (and ``masks``) of the same shape.

    >>> random_flip(jax.random.key(0), jnp.ones((2, 4, 4, 3))).shape
    (2, 4, 4, 3)
    """
    _check(images, "random_flip")
    flip = flip_draws(key, images.shape[0], index)
    out = jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
    if masks is None:
        return out
    return out, jnp.where(flip[:, None, None], masks[:, :, ::-1], masks)


def augment(key, images, masks=None, *, crop_padding: int = 4, flip: bool = True, index=None):
    """Random shift (zero-padded crop), then (optionally) a random horizontal flip.

    Args:
      key: a PRNG key.
      images: ``(N, H, W, C)``.
      masks: optional ``(N, H, W)`` per-pixel labels that follow the images.
      crop_padding: padding of :func:`random_crop` (0 disables it).
      flip: whether to apply :func:`random_flip` (off for digits, where a mirrored
        2 is not a 2).
      index: optional ``(N,)`` global example indices: each example's draws depend
        on ``(key, index[i])`` only, not on the batch it sits in.

    Returns:
      The augmented ``images``, or ``(images, masks)`` when masks are given.
    """
    out = random_crop(key, images, crop_padding, masks, index=index)
    if flip:
        out = random_flip(key, *(out if masks is not None else (out,)), index=index)
    return out
