"""mixup and CutMix: the targets are the mixture of the pixels, and the train
step trains with them."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_jax import config_validation, errors
from resnet_jax.training import mixing

from helpers import fixed_batch, make_trainer, run_steps, tiny_config

NUM_CLASSES = 10


def _mixing(mixup=0.0, cutmix=0.0, probability=0.5):
  return ml_collections.ConfigDict(
    {'mixup_alpha': mixup, 'cutmix_alpha': cutmix, 'cutmix_probability': probability}
  )


def _batch(n=8, size=16, seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(n, size, size, 3)), jnp.float32)
  labels = jnp.arange(n, dtype=jnp.int32) % NUM_CLASSES  # Neighbours differ.
  return images, labels


def _own_share(targets, labels):
  """The weight each image's targets give its own label (neighbours differ)."""
  return np.asarray(targets)[np.arange(len(labels)), np.asarray(labels)]


@pytest.mark.parametrize('seed', range(4))
def test_mixup_blends_each_image_with_its_neighbour_by_the_targets_weight(seed):
  images, labels = _batch()
  mixed, targets = mixing.mix(jax.random.key(seed), images, labels, NUM_CLASSES, _mixing(0.2))
  np.testing.assert_allclose(np.asarray(targets).sum(1), 1.0, rtol=1e-6)
  lam = _own_share(targets, labels)
  assert np.allclose(lam, lam[0]) and 0 <= lam[0] <= 1  # One weight for the batch.
  expected = lam[0] * images + (1 - lam[0]) * jnp.roll(images, 1, axis=0)
  np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-6)
  partner = np.asarray(targets)[np.arange(8), np.roll(np.asarray(labels), 1)]
  np.testing.assert_allclose(partner, 1 - lam, rtol=1e-6)


@pytest.mark.parametrize('seed', range(4))
def test_cutmix_targets_are_the_share_of_pixels_each_image_gave(seed):
  images, labels = _batch()
  mixed, targets = mixing.mix(jax.random.key(seed), images, labels, NUM_CLASSES, _mixing(0, 1.0))
  np.testing.assert_allclose(np.asarray(targets).sum(1), 1.0, rtol=1e-6)
  mixed, images = np.asarray(mixed), np.asarray(images)
  from_neighbour = np.all(mixed == np.roll(images, 1, axis=0), axis=-1)
  own = np.all(mixed == images, axis=-1)
  assert np.all(own | from_neighbour)  # Every pixel is one image's or the other's.
  share = own.mean(axis=(1, 2))
  np.testing.assert_allclose(_own_share(targets, labels), share, rtol=1e-6)
  # One box for the whole batch: the same pixels come from the neighbour.
  assert np.all(from_neighbour == from_neighbour[0])


@pytest.mark.parametrize('seed', range(8))
def test_cutmix_box_is_torchvisions_around_its_drawn_centre(seed):
  # torchvision: half sides int(0.5 * sqrt(1 - lam) * side), clipped at the
  # border; lam 0.75 on 32x32 gives half sides of 8.
  key = jax.random.key(seed)
  y_rng, x_rng = jax.random.split(key)
  cy, cx = int(jax.random.randint(y_rng, (), 0, 32)), int(jax.random.randint(x_rng, (), 0, 32))
  box, kept = mixing.cutmix_box(key, jnp.float32(0.75), 32, 32)
  expected = (max(cy - 8, 0), min(cy + 8, 32), max(cx - 8, 0), min(cx + 8, 32))
  assert tuple(map(int, box)) == expected
  area = (expected[1] - expected[0]) * (expected[3] - expected[2])
  assert float(kept) == pytest.approx(1 - area / 1024)


def test_cutmix_probability_picks_the_kind():
  images, labels = _batch()
  for seed in range(6):
    key = jax.random.key(seed)
    cut, _ = mixing.mix(key, images, labels, NUM_CLASSES, _mixing(0.2, 1.0, probability=1.0))
    blend, _ = mixing.mix(key, images, labels, NUM_CLASSES, _mixing(0.2, 1.0, probability=0.0))
    pasted = np.all(
      (np.asarray(cut) == np.asarray(images))
      | (np.asarray(cut) == np.roll(np.asarray(images), 1, axis=0))
    )
    assert pasted
    unblended = np.isclose(np.asarray(blend), np.asarray(images)).mean()
    assert unblended < 0.5  # A blend changes (nearly) every pixel.


def test_mixing_trains_and_is_off_by_default():
  config = tiny_config()
  assert not mixing.is_on(config.mixing)
  config.mixing.mixup_alpha = 0.2
  config.mixing.cutmix_alpha = 1.0
  config.label_smoothing = 0.1
  config_validation.validate(config, num_devices=8)
  trainer = make_trainer(config)
  state, losses = run_steps(trainer, 3, fixed_batch(trainer))
  assert all(np.isfinite(losses)) and int(state.step) == 3


@pytest.mark.parametrize(
  'field, value', [('mixup_alpha', -0.1), ('cutmix_alpha', float('nan')), ('cutmix_probability', 2)]
)
def test_bad_mixing_fields_fail_with_one_line(field, value):
  config = tiny_config()
  config.mixing[field] = value
  with pytest.raises(errors.ConfigError, match=f'mixing.{field}') as e:
    config_validation.validate(config, num_devices=1)
  assert '\n' not in str(e.value)
