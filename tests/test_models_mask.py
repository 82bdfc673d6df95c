"""Pad-and-mask inference: images of any size batched on one canvas.

With `mask`, each image's logits must equal those of the image run alone,
whatever the padding holds.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models

from helpers import random_batch_stats

KEY = jax.random.key(0)


def _variables(model, seed=1):
  """Initialised variables with random BN statistics (mean ~0, var ~1)."""
  variables = jax.jit(functools.partial(model.init, train=False))(KEY, jnp.zeros((1, 32, 32, 3)))
  return random_batch_stats(variables, seed)


def _canvas(sizes, canvas_size, seed=2):
  """Images of `sizes` (h, w) on one canvas with junk padding, and the mask."""
  keys = jax.random.split(jax.random.key(seed), len(sizes) + 1)
  images = [np.asarray(jax.random.normal(k, (h, w, 3))) for k, (h, w) in zip(keys, sizes)]
  canvas = 5 * np.asarray(jax.random.normal(keys[-1], (len(sizes), canvas_size, canvas_size, 3)))
  mask = np.zeros(canvas.shape[:3], bool)
  for i, (image, (h, w)) in enumerate(zip(images, sizes)):
    canvas[i, :h, :w] = image
    mask[i, :h, :w] = True
  for i, value in zip(range(len(sizes)), (np.inf, np.nan)):  # Padding may hold anything.
    canvas[i][tuple(np.argwhere(~mask[i])[-1])] = value
  return images, canvas, mask


@pytest.mark.parametrize(
  'name,options,sizes',
  [
    ('cifar_resnet20', {}, [(37, 53), (64, 41)]),
    ('cifar_resnet20', {'scan_blocks': False}, [(37, 53), (30, 31)]),
    pytest.param('resnet18', {'num_classes': 10}, [(61, 45), (33, 64)], marks=pytest.mark.slow),
    pytest.param('resnet50', {'num_classes': 10}, [(61, 45), (50, 57)], marks=pytest.mark.slow),
    pytest.param(
      'resnet50',
      {'num_classes': 10, 'downsample_on_3x3': True},
      [(61, 45), (64, 35)],
      marks=pytest.mark.slow,
    ),
  ],
)
def test_masked_canvas_matches_each_image_alone(name, options, sizes):
  model = models.create_model(name, **options)
  variables = _variables(model)
  images, canvas, mask = _canvas(sizes, 64)
  apply = jax.jit(functools.partial(model.apply, train=False))
  logits = apply(variables, canvas, mask=mask)
  assert logits.shape == (2, model.num_classes) and logits.dtype == jnp.float32
  for i, image in enumerate(images):
    alone = apply(variables, image[None])[0]
    scale = float(jnp.abs(alone).max())
    assert scale > 0.1
    np.testing.assert_allclose(
      logits[i], alone, rtol=1e-4, atol=1e-5 * scale, err_msg=f'image {i}, {image.shape}'
    )
  # The padding does matter without the mask (an all-true mask is no mask).
  unmasked = apply(variables, np.where(np.isfinite(canvas), canvas, 1.0), mask=np.ones_like(mask))
  assert not np.allclose(unmasked[0], apply(variables, images[0][None])[0], rtol=1e-2)


def test_full_mask_is_no_mask():
  model = models.create_model('cifar_resnet20', scan_blocks=False)
  variables = _variables(model)
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  np.testing.assert_allclose(
    model.apply(variables, x, train=False, mask=jnp.ones((2, 16, 16), jnp.float32)),
    model.apply(variables, x, train=False),
    rtol=1e-6,
    atol=1e-6,
  )


def test_empty_mask_gives_finite_logits():
  # Batch-padding examples have no valid pixel: finite logits (the fc bias),
  # and the other examples are unaffected.
  model = models.create_model('cifar_resnet20', scan_blocks=False)
  variables = _variables(model)
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  mask = jnp.ones((2, 16, 16), bool).at[1].set(False)
  logits = model.apply(variables, x, train=False, mask=mask)
  np.testing.assert_allclose(logits[1], variables['params']['fc']['bias'], atol=1e-6)
  np.testing.assert_allclose(
    logits[0], model.apply(variables, x[:1], train=False)[0], rtol=1e-5, atol=1e-5
  )


def test_mask_is_for_inference_only():
  model = models.create_model('cifar_resnet20')
  x = jnp.zeros((2, 16, 16, 3))
  variables = jax.eval_shape(functools.partial(model.init, train=False), KEY, x)
  with pytest.raises(ValueError, match='inference'):
    jax.eval_shape(
      functools.partial(model.apply, train=True, mutable=['batch_stats']),
      variables,
      x,
      mask=jnp.ones((2, 16, 16), bool),
    )
  with pytest.raises(ValueError, match='shape'):
    jax.eval_shape(
      functools.partial(model.apply, train=False), variables, x, mask=jnp.ones((2, 16, 15), bool)
    )
