"""Backbone features (`features=True`, `feature_shapes`) and the scanned <->
per-block variable layouts (`unscan`, `rescan`, `is_scanned`).

Checks over the whole zoo go through `jax.eval_shape` (no FLOPs, no compile);
values come from two tiny nets, cifar_resnet20 at 8x8 and resnet18 at 32x32,
applied under `jax.jit` (an eager apply of a scanned net recompiles its scans).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models

from helpers import random_batch_stats

KEY = jax.random.key(0)
TINY = {'cifar_resnet20': 8, 'resnet18': 32}  # name -> input size of the value tests.
# The ImageNet-stem net is the slow tier's: the CIFAR one covers the same code.
TINY_NAMES = ['cifar_resnet20', pytest.param('resnet18', marks=pytest.mark.slow)]


def _expected_shapes(name, size, batch):
  """The paper's stage shapes of MODELS[name] for size x size inputs."""
  spec = models.MODELS[name]
  imagenet = spec['stem'] == 'imagenet'
  expansion = 4 if spec['block_cls'] is models.BottleneckBlock else 1
  out = {}
  for i in range(len(spec['stage_sizes'])):
    stride = (4 if imagenet else 1) * 2**i
    channels = spec['num_filters'] * 2**i * expansion
    out[f'stage{i + 1}'] = (batch, -(-size // stride), -(-size // stride), channels)
  out['pooled'] = (batch, channels)
  out['logits'] = (batch, spec['num_classes'])
  return out


@pytest.mark.parametrize('name', list(models.MODELS))
def test_feature_shapes_of_every_model(name):
  size = 32 if name.startswith('cifar') else 224
  model = models.create_model(name)
  shapes = models.feature_shapes(model, (size, size, 3), batch_size=2)
  assert shapes == _expected_shapes(name, size, 2)
  assert list(shapes) == list(_expected_shapes(name, size, 2))  # Net order.
  # 'pooled' is the fc layer's input.
  fc = models.abstract_variables(model)['params']['fc']['kernel']
  assert fc.shape == (shapes['pooled'][1], shapes['logits'][1])


def test_feature_shapes_match_the_paper_backbones():
  # C2..C5 of ResNet-50 at 224: strides 4, 8, 16, 32.
  assert models.feature_shapes(models.create_model('resnet50')) == {
    'stage1': (1, 56, 56, 256),
    'stage2': (1, 28, 28, 512),
    'stage3': (1, 14, 14, 1024),
    'stage4': (1, 7, 7, 2048),
    'pooled': (1, 2048),
    'logits': (1, 1000),
  }
  # A stride-2 layer maps H to ceil(H/2); the fc follows num_classes.
  model = models.create_model('cifar_resnet20', num_classes=100)
  assert models.feature_shapes(model, (33, 20, 3)) == {
    'stage1': (1, 33, 20, 16),
    'stage2': (1, 17, 10, 32),
    'stage3': (1, 9, 5, 64),
    'pooled': (1, 64),
    'logits': (1, 100),
  }


def test_features_dtypes_and_unchanged_variables():
  model = models.create_model('cifar_resnet20', dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  init = lambda features: jax.eval_shape(
    lambda x: model.init_with_output(KEY, x, train=False, features=features), x
  )
  (out, variables), (logits, plain_variables) = init(True), init(False)
  assert {k: a.dtype for k, a in out.items()} == {
    'stage1': jnp.bfloat16,
    'stage2': jnp.bfloat16,
    'stage3': jnp.bfloat16,
    'pooled': jnp.float32,
    'logits': jnp.float32,
  }
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert jax.tree.structure(variables) == jax.tree.structure(plain_variables)
  assert jax.tree.leaves(variables) == jax.tree.leaves(plain_variables)


@functools.cache
def _net(name, scan_blocks=True):
  """(model, jitted eval apply) of a tiny net."""
  model = models.create_model(name, scan_blocks=scan_blocks)
  apply = jax.jit(functools.partial(model.apply, train=False), static_argnames='features')
  return model, apply


@functools.cache
def _variables(name):
  """Scanned variables of `name` with random BN statistics; do not mutate."""
  model, _ = _net(name)
  x = jnp.zeros((1, TINY[name], TINY[name], 3))
  variables = jax.jit(functools.partial(model.init, train=False))(KEY, x)
  # Random statistics: every block's entries then differ, so a misplaced
  # block shows in the round trip and in the logits.
  return random_batch_stats(variables, seed=1)


def _images(size, batch=2, seed=2):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


@pytest.mark.parametrize('name', TINY_NAMES)
def test_features_logits_are_the_logits_and_pooled_feeds_fc(name):
  _, apply = _net(name)
  variables, x = _variables(name), _images(TINY[name])
  logits = apply(variables, x)
  out = apply(variables, x, features=True)
  np.testing.assert_array_equal(out['logits'], logits)
  fc = variables['params']['fc']
  np.testing.assert_allclose(
    out['pooled'] @ fc['kernel'] + fc['bias'], logits, rtol=1e-5, atol=1e-5
  )
  last = out[f'stage{len(models.MODELS[name]["stage_sizes"])}']
  np.testing.assert_allclose(out['pooled'], last.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(out['pooled']).max()) > 0.1


def test_masked_features_match_each_image_alone():
  _, apply = _net('cifar_resnet20')
  variables = _variables('cifar_resnet20')
  sizes = [(8, 8), (5, 6)]
  canvas = np.array(5 * _images(8, seed=3))
  mask = np.zeros(canvas.shape[:3], bool)
  for i, (h, w) in enumerate(sizes):
    mask[i, :h, :w] = True
  canvas[1, 7, 7] = np.nan  # The padding may hold anything.
  out = apply(variables, canvas, mask=mask, features=True)
  fc = variables['params']['fc']
  np.testing.assert_allclose(
    out['pooled'] @ fc['kernel'] + fc['bias'], out['logits'], rtol=1e-5, atol=1e-5
  )
  for i, (h, w) in enumerate(sizes):
    alone = apply(variables, canvas[i : i + 1, :h, :w], features=True)
    for key in ('pooled', 'logits'):
      np.testing.assert_allclose(out[key][i], alone[key][0], rtol=1e-4, atol=1e-5, err_msg=key)
    for key in ('stage1', 'stage2', 'stage3'):
      _, sh, sw, _ = alone[key].shape
      stage = np.asarray(out[key][i])
      np.testing.assert_allclose(stage[:sh, :sw], alone[key][0], rtol=1e-4, atol=1e-5)
      outside = np.ones(stage.shape[:2], bool)
      outside[:sh, :sw] = False
      assert not stage[outside].any(), f'{key}: nonzero outside the valid region'


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('name', TINY_NAMES)
def test_unscan_rescan_round_trip_and_unscanned_net(name):
  variables = _variables(name)
  flat = models.unscan(variables)
  # Exactly the layout of the same net built with scan_blocks=False.
  unrolled, unrolled_apply = _net(name, scan_blocks=False)
  abstract = models.abstract_variables(unrolled)
  assert jax.tree.structure(flat) == jax.tree.structure(abstract)
  assert [a.shape for a in jax.tree.leaves(flat)] == [a.shape for a in jax.tree.leaves(abstract)]
  _assert_identical(models.rescan(flat), variables)
  # One collection at a time gives the same as the whole dict.
  for col in ('params', 'batch_stats'):
    _assert_identical(models.unscan(variables[col]), flat[col])
    _assert_identical(models.rescan(flat[col]), variables[col])
  # Host (numpy) copies stay numpy and round-trip too.
  host = jax.device_get(variables)
  host_flat = models.unscan(host)
  assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(models.rescan(host_flat)))
  _assert_identical(models.rescan(host_flat), host)
  # Row j of stageI_rest is block j + 2.
  rest = variables['params']['stage1_rest']['conv1']['kernel']
  for j, row in enumerate(rest):
    np.testing.assert_array_equal(flat['params'][f'stage1_block{j + 2}']['conv1']['kernel'], row)

  x = _images(TINY[name])
  np.testing.assert_allclose(
    unrolled_apply(flat, x), _net(name)[1](variables, x), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize('name', ['resnet50', 'plain34', 'cifar_resnet56'])
def test_layouts_of_abstract_variables(name):
  scanned = models.abstract_variables(models.create_model(name))
  unrolled = models.abstract_variables(models.create_model(name, scan_blocks=False))
  for a, b in ((models.unscan(scanned), unrolled), (models.rescan(unrolled), scanned)):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert jax.tree.leaves(a) == jax.tree.leaves(b)  # Shapes and dtypes.


def test_is_scanned_and_idempotence():
  variables = _variables('cifar_resnet20')
  flat = models.unscan(variables)
  assert models.is_scanned(variables)
  assert models.is_scanned(variables['params']) and models.is_scanned(variables['batch_stats'])
  assert not models.is_scanned(flat)
  assert not models.is_scanned(flat['params']) and not models.is_scanned(flat['batch_stats'])
  _assert_identical(models.unscan(flat), flat)
  _assert_identical(models.rescan(variables), variables)


def test_rescan_and_unscan_refuse_inconsistent_layouts():
  flat = models.unscan(_variables('cifar_resnet20'))['params']
  gap = {k: v for k, v in flat.items() if k != 'stage2_block2'}
  with pytest.raises(ValueError, match='stage2'):
    models.rescan(gap)
  gap = {k: v for k, v in flat.items() if k != 'stage2_block3'}
  gap['stage2_block4'] = flat['stage2_block3']
  with pytest.raises(ValueError, match='without gaps'):
    models.rescan(gap)
  both = {**models.rescan(flat), 'stage1_block2': flat['stage1_block2']}
  with pytest.raises(ValueError, match='both'):
    models.unscan(both)
  with pytest.raises(ValueError, match='both'):
    models.rescan(both)
