"""Data augmentation as pure, jittable functions of a PRNG key and a batch.

They run on device inside the jitted train step, so augmentation costs no host
time and no extra compilation. Masks (per-pixel labels) get the same crop and
flip as their images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def random_crop(key, images, padding: int, masks=None):
    """Zero-pad every image by ``padding`` pixels and crop it back at a random offset.

    Args:
      key: a PRNG key.
      images: ``(N, H, W, C)``.
      padding: pixels added on each side before cropping (a Python int >= 0).
      masks: optional ``(N, H, W)`` per-pixel labels, cropped the same way (padded
        with 0, the background class).

    Returns:
      ``images`` of the same shape (and ``masks`` when given), each shifted by up to
      ``padding`` pixels in each direction.

    >>> random_crop(jax.random.key(0), jnp.ones((2, 8, 8, 1)), 1).shape
    (2, 8, 8, 1)
    """
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"random_crop: padding must be an int >= 0, got {padding!r}")
    if images.ndim != 4:
        raise ValueError(f"random_crop: images must be (N, H, W, C), got shape {images.shape}")
    if padding == 0:
        return images if masks is None else (images, masks)
    n, h, w, c = images.shape
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    p = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    padded = jnp.pad(images, p)

    def crop(img, off):
        return lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    out = jax.vmap(crop)(padded, offsets)
    if masks is None:
        return out
    padded_m = jnp.pad(masks, p[:3])
    out_m = jax.vmap(lambda m, off: lax.dynamic_slice(m, (off[0], off[1]), (h, w)))(
        padded_m, offsets)
    return out, out_m


def random_flip(key, images, masks=None):
    """Flip each image left-right with probability 1/2.

    Args:
      key: a PRNG key.
      images: ``(N, H, W, C)``.
      masks: optional ``(N, H, W)`` per-pixel labels, flipped with their images.

    Returns:
      ``images`` (and ``masks``) of the same shape.

    >>> random_flip(jax.random.key(0), jnp.ones((2, 4, 4, 3))).shape
    (2, 4, 4, 3)
    """
    if images.ndim != 4:
        raise ValueError(f"random_flip: images must be (N, H, W, C), got shape {images.shape}")
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    out = jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
    if masks is None:
        return out
    return out, jnp.where(flip[:, None, None], masks[:, :, ::-1], masks)


def augment(key, images, masks=None, *, crop_padding: int = 4, flip: bool = True):
    """Random crop with padding, then (optionally) a random horizontal flip.

    Args:
      key: a PRNG key.
      images: ``(N, H, W, C)``.
      masks: optional ``(N, H, W)`` per-pixel labels that follow the images.
      crop_padding: padding of :func:`random_crop` (0 disables it).
      flip: whether to apply :func:`random_flip` (off for digits, where a mirrored
        2 is not a 2).

    Returns:
      The augmented ``images``, or ``(images, masks)`` when masks are given.
    """
    k_crop, k_flip = jax.random.split(key)
    out = random_crop(k_crop, images, crop_padding, masks)
    if flip:
        out = random_flip(k_flip, *(out if masks is not None else (out,)))
    return out
