"""Tests of random erasing (`data.random_erasing`) and of its place in both
families' device-side training preprocessing.

The batches are images whose pixels are all nonzero, so the erased pixels are
exactly the zeros of the output; their boxes are checked against
torchvision's `RandomErasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import config_lib
from resnet_jax.data import cifar, core, imagenet
from resnet_jax.data import random_erasing as erasing

KEY = jax.random.key(0)
ERASING_KEY = jax.random.fold_in(KEY, core.KEY_STREAMS['random_erasing'])
H, W = 24, 40  # Not square: a swapped height and width would show.


def _images(n, h=H, w=W, c=3):
  """(n, h, w, c) float32, every pixel nonzero."""
  return jnp.asarray(np.random.default_rng(0).uniform(1, 2, (n, h, w, c)).astype(np.float32))


def _box(erased: np.ndarray):
  """(top, left, height, width) of the zeros of one (h, w) mask, checking
  that they form one filled axis-aligned box; None if there are none."""
  if not erased.any():
    return None
  rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
  top, left = rows[0], cols[0]
  height, width = rows[-1] + 1 - top, cols[-1] + 1 - left
  expected = np.zeros_like(erased)
  expected[top : top + height, left : left + width] = True
  np.testing.assert_array_equal(erased, expected)
  return top, left, height, width


def _erased(out):
  """(B, H, W) bool of the erased pixels, checking all channels agree."""
  zero = np.asarray(out) == 0
  np.testing.assert_array_equal(zero, np.broadcast_to(zero[..., :1], zero.shape))
  return zero[..., 0]


def test_probability_zero_is_the_identity():
  images = _images(8)
  np.testing.assert_array_equal(erasing.random_erasing(KEY, images, 0.0), images)
  jitted = jax.jit(functools.partial(erasing.random_erasing, probability=0.0))
  np.testing.assert_array_equal(jitted(KEY, images), images)


def test_probability_one_erases_one_box_of_torchvisions_sizes_in_every_image():
  n = 512
  out = erasing.random_erasing(KEY, _images(n), 1.0)
  area = H * W
  found, tops, lefts = 0, [], []
  for mask in _erased(out):
    box = _box(mask)
    if box is None:  # No try fitted: left as it is (rare at these sizes).
      continue
    found += 1
    top, left, h, w = box
    assert h < H and w < W
    # The sides are rounded from a box of area in [0.02, 0.33] and aspect
    # h / w in [0.3, 3.3]: some sides within half a pixel of these fit.
    assert (h - 0.5) * (w - 0.5) <= 0.33 * area and (h + 0.5) * (w + 0.5) >= 0.02 * area
    assert (h - 0.5) / (w + 0.5) <= 3.3 and (h + 0.5) / (w - 0.5) >= 0.3
    tops.append(top / (H - h))
    lefts.append(left / (W - w))
  assert found >= 0.98 * n
  # Placed uniformly: the offsets span their ranges, centred on average.
  for offsets in (tops, lefts):
    assert min(offsets) == 0 and max(offsets) == 1
    assert abs(np.mean(offsets) - 0.5) < 0.05


def test_box_sizes_follow_the_drawn_distribution():
  out = erasing.random_erasing(jax.random.key(3), _images(2000, 64, 64, 1), 1.0)
  boxes = [b for b in map(_box, _erased(out)) if b is not None]
  fractions = np.array([h * w / 64**2 for _, _, h, w in boxes])
  log_aspects = np.log([h / w for _, _, h, w in boxes])
  # Area ~ U(0.02, 0.33), less the large boxes that do not fit (mostly
  # long thin ones); log aspect ~ U(log 0.3, log 3.3), about symmetric.
  assert 0.14 < fractions.mean() < 0.19
  assert fractions.min() < 0.03 and fractions.max() > 0.3
  assert abs(log_aspects.mean()) < 0.1
  assert log_aspects.min() < np.log(0.4) and log_aspects.max() > np.log(2.5)


def test_images_no_try_fits_are_left_as_they_are(monkeypatch):
  # Boxes of 99% of the area never fit strictly inside: torchvision's
  # fallback after its 10 tries is the untouched image.
  monkeypatch.setattr(erasing, 'AREA_RANGE', (0.99, 1.0))
  images = _images(64, 32, 32)
  np.testing.assert_array_equal(erasing.random_erasing(KEY, images, 1.0), images)


@pytest.mark.parametrize('p', [0.25, 0.5])
def test_the_fraction_of_erased_images_is_the_probability(p):
  n = 4000
  out = erasing.random_erasing(jax.random.key(1), _images(n, 16, 16, 1), p)
  fraction = _erased(out).any(axis=(1, 2)).mean()
  assert abs(fraction - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.01  # A few tries never fit.


def test_jit_and_determinism_given_the_key():
  images = _images(32)
  erase = jax.jit(functools.partial(erasing.random_erasing, probability=0.5))
  out = erase(KEY, images)
  np.testing.assert_array_equal(out, erasing.random_erasing(KEY, images, 0.5))
  np.testing.assert_array_equal(erase(KEY, images), out)
  assert not np.array_equal(erase(jax.random.key(1), images), out)
  kept = ~_erased(out)[..., None].repeat(3, -1)
  np.testing.assert_array_equal(np.asarray(out)[kept], np.asarray(images)[kept])


def test_keeps_the_dtype():
  images = _images(4).astype(jnp.bfloat16)
  out = erasing.random_erasing(KEY, images, 1.0)
  assert out.dtype == jnp.bfloat16 and out.shape == images.shape


def _norm(h, w):
  return {'mean': jnp.full((h, w, 3), 100.0), 'std': jnp.ones(3)}


def test_cifar_preprocessing_erases_only_when_asked():
  config = config_lib.cifar10()
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), np.uint8))
  norm = _norm(8, 8)
  paper = cifar.augment(KEY, core.normalize(images, norm))  # The default, as it always was.
  np.testing.assert_array_equal(cifar.CifarData.preprocess_train(KEY, images, norm, config), paper)
  config.input.random_erasing = 1.0
  out = cifar.CifarData.preprocess_train(KEY, images, norm, config)
  expected = erasing.random_erasing(ERASING_KEY, paper, 1.0)
  np.testing.assert_array_equal(out, expected)
  assert not np.array_equal(out, paper)


def test_imagenet_preprocessing_erases_after_normalisation_only_when_asked():
  config = config_lib.imagenet()
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), np.uint8))
  norm = {'mean': jnp.asarray(imagenet.MEAN_RGB), 'std': jnp.asarray(imagenet.STDDEV_RGB)}
  lit = imagenet.lighting(KEY, images.astype(jnp.float32), config.input.lighting_std)
  paper = core.normalize(lit, norm)  # The default, as it always was.
  np.testing.assert_array_equal(
    imagenet.ImagenetData.preprocess_train(KEY, images, norm, config), paper
  )
  config.input.random_erasing = 1.0
  out = imagenet.ImagenetData.preprocess_train(KEY, images, norm, config)
  expected = erasing.random_erasing(ERASING_KEY, paper, 1.0)
  np.testing.assert_array_equal(out, expected)
  assert not np.array_equal(out, paper)
