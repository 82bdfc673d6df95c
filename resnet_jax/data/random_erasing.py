"""Random erasing (Zhong et al. 2020) on the device, as torchvision's `RandomErasing`.

torchvision's `RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)`
erases an image with probability p: it tries up to 10 boxes, each of area
U(scale) x H x W and aspect ratio h/w log-uniform in `ratio` (sides rounded),
and takes the first that fits strictly inside the image, at a uniformly random
position; if none fits the image is left as it is. Here every image of a batch
draws all 10 tries at once and keeps the first that fits, so the box is drawn
from the same distribution with static shapes, and is cut out with index
comparisons: it compiles once and runs inside the train step. Applied after
normalisation, the erased pixels are 0, i.e. the mean pixel.
"""

import math

import jax
import jax.numpy as jnp

AREA_RANGE = (0.02, 0.33)  # torchvision's `scale`: the box's fraction of the image.
ASPECT_RANGE = (0.3, 3.3)  # torchvision's `ratio`: the box's height / width.
NUM_TRIES = 10  # torchvision's attempts before it gives up on an image.


def random_erasing(rng: jax.Array, images: jax.Array, probability: float) -> jax.Array:
  """Erases one random box of each image with probability `probability`.

  Args:
    rng: PRNG key; each image's draws come from it.
    images: float (B, H, W, C) batch, normalised (0 is the mean).
    probability: chance that an image is erased (a Python number).

  Returns:
    The images with each erased box set to 0; shape and dtype kept.
  """
  if not probability:
    return images
  b, h, w, _ = images.shape
  top, left, height, width = _boxes(rng, b, h, w, probability)
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = (
    (rows >= top[:, None, None])
    & (rows < (top + height)[:, None, None])
    & (cols >= left[:, None, None])
    & (cols < (left + width)[:, None, None])
  )
  return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)


def _boxes(rng: jax.Array, b: int, h: int, w: int, probability: float):
  """(top, left, height, width) int32 (b,) each; height and width 0 for an
  image left as it is (not drawn, or no try fitted)."""
  erase_rng, area_rng, aspect_rng, top_rng, left_rng = jax.random.split(rng, 5)
  erase = jax.random.uniform(erase_rng, (b,)) < probability
  low, high = AREA_RANGE
  area = h * w * jax.random.uniform(area_rng, (b, NUM_TRIES), minval=low, maxval=high)
  log_low, log_high = math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])
  aspect = jnp.exp(jax.random.uniform(aspect_rng, (b, NUM_TRIES), minval=log_low, maxval=log_high))
  # Python's round() of torchvision and jnp.round both round half to even.
  heights = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  widths = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (heights < h) & (widths < w)
  first = jnp.argmax(fits, axis=1)[:, None]  # The first try that fits (0 if none).
  keep = erase & fits.any(axis=1)
  height = jnp.where(keep, jnp.take_along_axis(heights, first, axis=1)[:, 0], 0)
  width = jnp.where(keep, jnp.take_along_axis(widths, first, axis=1)[:, 0], 0)
  top = _uniform_int(top_rng, h - height + 1)
  left = _uniform_int(left_rng, w - width + 1)
  return top, left, height, width


def _uniform_int(rng: jax.Array, count: jax.Array) -> jax.Array:
  """One integer uniform in [0, count_i) per entry of `count` (int32 (b,))."""
  u = jax.random.uniform(rng, count.shape)
  return jnp.minimum((u * count).astype(jnp.int32), count - 1)
