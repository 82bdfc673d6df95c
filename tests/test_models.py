"""Tests of the model zoo: shapes, shortcuts, BatchNorm, responses, init.

Shape-only checks go through `jax.eval_shape` (no compile). Tests that need
values share one eager init of cifar_resnet20 (`_cifar20_variables`) and run
mostly its unscanned twin (`_cifar20_unrolled`): on CPU, every eager apply of
a scanned model compiles the scan bodies again, while unscanned eager ops are
compiled once per shape and cached.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.models import complexity
from resnet_jax.research import activations

from helpers import layer_responses, unscan

KEY = jax.random.key(0)


def _x(size, batch=2, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _spec(size, batch=2):
  return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)


def _init_shapes(model, size, batch=1):
  return jax.eval_shape(lambda x: model.init(KEY, x, train=False), _spec(size, batch))


@functools.cache
def _cifar20_variables():
  """Freshly initialised cifar_resnet20 variables (scanned); do not mutate."""
  return models.create_model('cifar_resnet20').init(KEY, _x(32, 1), train=False)


@functools.cache
def _cifar20_unrolled():
  """cifar_resnet20 with scan_blocks=False and the same (renamed) variables."""
  variables = {col: unscan(tree) for col, tree in _cifar20_variables().items()}
  return models.create_model('cifar_resnet20', scan_blocks=False), variables


def _paths(tree):
  """'a/b/c' paths of every leaf."""
  return [
    '/'.join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)
  ]


def _conv(x, kernel, strides=1):
  """The paper's convolution: (k-1)//2 zeros on each side, at any stride."""
  pads = [((k - 1) // 2,) * 2 for k in kernel.shape[:2]]
  return jax.lax.conv_general_dilated(
    x, kernel, (strides, strides), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def _bn_eval(x, params, stats, epsilon=1e-5):
  return (x - stats['mean']) / jnp.sqrt(stats['var'] + epsilon) * params['scale'] + params['bias']


@pytest.mark.parametrize(
  'name,size,options,num_classes',
  [
    ('cifar_resnet20', 32, {}, 10),
    ('cifar_resnet20', 32, {'shortcut': 'B'}, 10),
    ('cifar_resnet20', 32, {'shortcut': 'C'}, 10),
    ('cifar_resnet20', 32, {'scan_blocks': False}, 10),
    ('cifar_plain20', 32, {}, 10),
    ('cifar_resnet20', 32, {'num_classes': 100}, 100),
    ('resnet18', 64, {}, 1000),
    ('plain18', 64, {'num_classes': 7}, 7),
    ('resnet50', 64, {'num_classes': 5}, 5),
    ('resnet50', 64, {'downsample_on_3x3': True}, 1000),
  ],
)
def test_output_shape_train_and_eval(name, size, options, num_classes):
  model = models.create_model(name, **options)

  def forward(x):
    variables = model.init(KEY, x, train=False)
    eval_logits = model.apply(variables, x, train=False)
    train_logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return eval_logits, train_logits

  for logits in jax.eval_shape(forward, _spec(size)):
    assert logits.shape == (2, num_classes)
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize('dtype', [jnp.bfloat16, 'bfloat16'])
def test_bfloat16_compute_keeps_float32_params_and_logits(dtype):
  model = models.create_model('cifar_resnet20', dtype=dtype)

  def forward(x):
    variables = model.init(KEY, x, train=False)
    logits, state = model.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'])
    return (variables, logits, state['batch_stats'], layer_responses(state['intermediates']))

  variables, logits, stats, responses = jax.eval_shape(forward, _spec(32))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  for leaf in jax.tree.leaves((variables, stats)):
    assert leaf.dtype == jnp.float32
  # The layers really compute in bfloat16.
  assert {r.dtype for r in responses} == {jnp.dtype(jnp.bfloat16)}


def test_bfloat16_forward_close_to_float32():
  model, variables = _cifar20_unrolled()
  x = _x(32, 4)
  ref = model.apply(variables, x, train=False)
  out = model.clone(dtype=jnp.bfloat16).apply(variables, x, train=False)
  assert out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_train_mode_updates_batch_stats():
  model, variables = _cifar20_unrolled()
  x = _x(32, 4)
  logits, state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (4, 10) and np.all(np.isfinite(logits))
  assert set(state) == {'batch_stats'}
  old, new = variables['batch_stats'], state['batch_stats']
  assert jax.tree.structure(old) == jax.tree.structure(new)
  for path, a, b in zip(_paths(old), jax.tree.leaves(old), jax.tree.leaves(new)):
    assert not np.allclose(a, b), path
  # The first BN's running statistics, by hand: momentum 0.9 from (0, 1),
  # biased batch variance.
  y = _conv(x, variables['params']['conv_init']['kernel'])
  np.testing.assert_allclose(new['bn_init']['mean'], 0.1 * y.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new['bn_init']['var'], 0.9 + 0.1 * y.var((0, 1, 2)), rtol=1e-4)


def test_eval_mode_is_deterministic_and_stateless():
  model, variables = _cifar20_unrolled()
  x = _x(32, 4)
  out = model.apply(variables, x, train=False)
  assert isinstance(out, jax.Array) and out.shape == (4, 10)
  np.testing.assert_array_equal(model.apply(variables, x, train=False), out)
  # Even when allowed to, eval mode writes no statistics.
  out2, state = model.apply(variables, x, train=False, mutable=['batch_stats'])
  np.testing.assert_array_equal(out2, out)
  for a, b in zip(jax.tree.leaves(variables['batch_stats']), jax.tree.leaves(state['batch_stats'])):
    np.testing.assert_array_equal(a, b)
  # Running statistics: an example's logits do not depend on the batch.
  np.testing.assert_allclose(
    model.apply(variables, x[:1], train=False), out[:1], rtol=1e-5, atol=1e-5
  )


def test_bn_group_size_equal_to_batch_matches_batchnorm():
  model, variables = _cifar20_unrolled()
  x = _x(32, 4)
  grouped = model.clone(bn_group_size=4)
  # Same variable names and shapes, so checkpoints are interchangeable.
  shapes = _init_shapes(models.create_model('cifar_resnet20', bn_group_size=4), 32)
  scanned = _cifar20_variables()
  assert jax.tree.structure(shapes) == jax.tree.structure(scanned)
  for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(scanned)):
    assert a.shape == b.shape and a.dtype == b.dtype
  ref, ref_state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  out, state = grouped.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bn_group_size_smaller_than_batch():
  model, variables = _cifar20_unrolled()
  x = _x(32, 4)
  grouped = model.clone(bn_group_size=2)
  ref, ref_state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  out, state = grouped.apply(variables, x, train=True, mutable=['batch_stats'])
  assert not np.allclose(out, ref, atol=1e-3)
  # Each group is normalised on its own: the first half of the batch sees
  # exactly what a batch of only those two examples would.
  first, _ = model.apply(variables, x[:2], train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out[:2], first, rtol=1e-4, atol=1e-4)
  # Running statistics move; with equal groups, the mean over group means of
  # the first BN is the batch mean.
  for a, b in zip(jax.tree.leaves(variables['batch_stats']), jax.tree.leaves(state['batch_stats'])):
    assert not np.allclose(a, b)
  np.testing.assert_allclose(
    state['batch_stats']['bn_init']['mean'],
    ref_state['batch_stats']['bn_init']['mean'],
    rtol=1e-4,
    atol=1e-6,
  )
  # Eval mode uses the running statistics, exactly as nn.BatchNorm.
  np.testing.assert_allclose(
    grouped.apply(variables, x, train=False),
    model.apply(variables, x, train=False),
    rtol=1e-5,
    atol=1e-5,
  )
  with pytest.raises(ValueError, match='divisible'):
    model.clone(bn_group_size=3).apply(variables, x, train=True, mutable=['batch_stats'])


def test_zero_pad_shortcut_values():
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3) + 1
  y = models.zero_pad_shortcut(x, 8, 2)
  assert y.shape == (2, 2, 2, 8)
  np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
  np.testing.assert_array_equal(y[0, 1, 1, :3], x[0, 2, 2, :])
  np.testing.assert_array_equal(y[..., 3:], 0.0)
  # Stride 1: padding only; same width: identity.
  y = models.zero_pad_shortcut(x, 5, 1)
  assert y.shape == (2, 4, 4, 5)
  np.testing.assert_array_equal(y[..., :3], x)
  np.testing.assert_array_equal(y[..., 3:], 0.0)
  np.testing.assert_array_equal(models.zero_pad_shortcut(x, 3, 1), x)
  with pytest.raises(ValueError):
    models.zero_pad_shortcut(x, 2, 1)


@pytest.mark.parametrize(
  'option,features,strides,projects',
  [
    ('A', 16, 1, False),
    ('A', 32, 2, False),
    ('B', 16, 1, False),
    ('B', 32, 2, True),
    ('B', 32, 1, True),
    ('B', 16, 2, True),
    ('C', 16, 1, True),
    ('C', 32, 2, True),
  ],
)
def test_shortcut_params(option, features, strides, projects):
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  module = models.Shortcut(features, strides, option, conv, norm)
  x = jax.random.normal(KEY, (1, 8, 8, 16))
  variables = module.init(KEY, x)
  y = module.apply(variables, x)
  assert y.shape == (1, 8 // strides, 8 // strides, features)
  params = variables.get('params', {})
  if projects:
    assert params['conv']['kernel'].shape == (1, 1, 16, features)
    assert set(params['bn']) == {'scale', 'bias'}
  else:
    assert not jax.tree.leaves(variables)
    if option == 'A':
      np.testing.assert_array_equal(y, models.zero_pad_shortcut(x, features, strides))
    else:
      np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize(
  'name,options,size',
  [
    ('plain18', {}, 64),
    ('plain34', {}, 64),
    ('plain18', {'shortcut': 'C'}, 64),  # `plain` wins over the option.
    ('cifar_plain20', {}, 32),
    ('cifar_plain110', {}, 32),
  ],
)
def test_plain_nets_have_no_shortcuts(name, options, size):
  model = models.create_model(name, **options)
  assert model.plain
  paths = _paths(_init_shapes(model, size))
  assert paths and not [p for p in paths if 'shortcut' in p]


@pytest.mark.parametrize(
  'name,options,size,expected',
  [
    (
      'resnet18',
      {},
      64,
      {
        'stage2_block1': (1, 1, 64, 128),
        'stage3_block1': (1, 1, 128, 256),
        'stage4_block1': (1, 1, 256, 512),
      },
    ),
    (
      'resnet50',
      {},
      64,
      {
        'stage1_block1': (1, 1, 64, 256),
        'stage2_block1': (1, 1, 256, 512),
        'stage3_block1': (1, 1, 512, 1024),
        'stage4_block1': (1, 1, 1024, 2048),
      },
    ),
    ('cifar_resnet20', {}, 32, {}),  # option A: parameter-free.
    (
      'cifar_resnet20',
      {'shortcut': 'B'},
      32,
      {'stage2_block1': (1, 1, 16, 32), 'stage3_block1': (1, 1, 32, 64)},
    ),
    (
      'resnet18',
      {'shortcut': 'C'},
      64,
      {
        'stage1_block1': (1, 1, 64, 64),
        'stage1_rest': (1, 1, 1, 64, 64),
        'stage2_block1': (1, 1, 64, 128),
        'stage2_rest': (1, 1, 1, 128, 128),
        'stage3_block1': (1, 1, 128, 256),
        'stage3_rest': (1, 1, 1, 256, 256),
        'stage4_block1': (1, 1, 256, 512),
        'stage4_rest': (1, 1, 1, 512, 512),
      },
    ),
  ],
)
def test_projection_shortcuts(name, options, size, expected):
  params = _init_shapes(models.create_model(name, **options), size)['params']
  found = {
    block: sub['shortcut']['conv']['kernel'].shape
    for block, sub in params.items()
    if 'shortcut' in sub
  }
  assert found == expected


def _response_shapes(model, size, batch=2):
  def responses(x):
    variables = model.init(KEY, x, train=False)
    _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
    return layer_responses(state['intermediates'])

  return [r.shape for r in jax.eval_shape(responses, _spec(size, batch))]


@pytest.mark.parametrize(
  'name,options',
  [
    ('cifar_resnet20', {}),
    ('cifar_plain20', {}),
    ('cifar_resnet20', {'scan_blocks': False}),
    ('cifar_resnet56', {}),
  ],
)
def test_layer_response_shapes_cifar(name, options):
  model = models.create_model(name, **options)
  n = model.stage_sizes[0]
  expected = [(2, 32, 32, 16)] * 2 * n + [(2, 16, 16, 32)] * 2 * n + [(2, 8, 8, 64)] * 2 * n
  assert _response_shapes(model, 32) == expected
  assert len(activations.response_names(model)) == 6 * n


@pytest.mark.parametrize(
  'name,options',
  [
    ('resnet18', {}),
    ('resnet50', {}),
    ('resnet50', {'downsample_on_3x3': True}),
  ],
)
def test_layer_response_shapes_imagenet(name, options):
  # 64x64 input: 16x16 after the stem, then 8, 4, 2. One response per 3x3 conv:
  # two per basic block, one per bottleneck (its 3x3 has `features` channels).
  model = models.create_model(name, **options)
  per_block = 2 if name == 'resnet18' else 1
  expected = []
  for i, (blocks, side) in enumerate(zip(model.stage_sizes, (16, 8, 4, 2))):
    expected += [(1, side, side, 64 * 2**i)] * blocks * per_block
  assert len(expected) == 16
  assert _response_shapes(model, 64, batch=1) == expected
  assert len(activations.response_names(model)) == 16


def _conv_calls_and_response_shapes(model, x_spec):
  """(kernel_size, padding) of every nn.Conv call, and `layer_responses` shapes."""
  calls = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.method_name == '__call__':
      calls.append((context.module.kernel_size, context.module.padding))
    return next_fun(*args, **kwargs)

  def responses(x):
    variables = model.init(KEY, x, train=False)
    _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
    return layer_responses(state['intermediates'])

  with nn.intercept_methods(record):
    shapes = [r.shape for r in jax.eval_shape(responses, x_spec)]
  return calls, shapes


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_symmetric_padding_and_ceil_halving(name):
  # Every convolution pads (k-1)//2 on each side (7x7: 3, 3x3: 1, 1x1: 0), so
  # every stride-2 layer maps n to ceil(n/2): odd, non-square inputs here.
  model = models.create_model(name)
  h, w = (45, 61) if model.stem == 'imagenet' else (33, 31)
  calls, shapes = _conv_calls_and_response_shapes(
    model, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  )
  assert {k for k, _ in calls} >= {(3, 3)}
  for kernel_size, padding in calls:
    assert nn.linear.canonicalize_padding(padding, 2) == [
      ((k - 1) // 2,) * 2 for k in kernel_size
    ], (kernel_size, padding)

  def half(side):
    return tuple(-(-n // 2) for n in side)

  side = half(half((h, w))) if model.stem == 'imagenet' else (h, w)  # conv, pool.
  expected = []
  for i, blocks in enumerate(model.stage_sizes):
    side = half(side) if i else side
    expected += [side] * blocks * (len(activations.response_names(model)) // sum(model.stage_sizes))
  assert [s[1:3] for s in shapes] == expected


@pytest.mark.parametrize(
  'block_cls,downsample_on_3x3',
  [
    (models.BasicBlock, False),
    (models.BottleneckBlock, True),
  ],
)
def test_stride2_3x3_is_centred_on_input_2i(block_cls, downsample_on_3x3):
  # With a kernel that keeps only its centre tap, the stride-2 3x3's output
  # (i, j) is input (2i, 2j), where the shortcut samples; 'SAME' would give
  # (2i+1, 2j+1) on even sizes.
  block = block_cls(
    4,
    2,
    conv=functools.partial(nn.Conv, use_bias=False),
    norm=functools.partial(nn.BatchNorm, use_running_average=True),
    shortcut='A',
    downsample_on_3x3=downsample_on_3x3,
  )
  for size in (8, 7):
    x = jax.random.normal(KEY, (1, size, size, 4))
    variables = block.init(KEY, x)
    params = variables['params']
    if block_cls is models.BottleneckBlock:  # conv1 (1x1) passes x through.
      params = {**params, 'conv1': {'kernel': jnp.eye(4)[None, None]}}
      first, response = 'conv2', 'response2'
    else:
      first, response = 'conv1', 'response1'
    kernel = params[first]['kernel']
    centre = jnp.zeros_like(kernel).at[1, 1].set(jnp.eye(4))
    params = {**params, first: {'kernel': centre}}
    _, state = block.apply({**variables, 'params': params}, x, mutable=['intermediates'])
    (y,) = state['intermediates'][response]
    half = -(-size // 2)
    assert y.shape == (1, half, half, 4)
    bn = 1 / np.sqrt(1 + 1e-5)  # eval-mode BN at its initial statistics.
    h = nn.relu(bn * x) if block_cls is models.BottleneckBlock else x
    np.testing.assert_allclose(y, bn * h[:, ::2, ::2], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(models.zero_pad_shortcut(x, 4, 2), x[:, ::2, ::2])


def test_stem_conv_pads_3_on_each_side():
  # The 7x7/2 stem against lax with explicit ((3, 3), (3, 3)): odd and even sides.
  model = models.create_model('resnet18').clone(stage_sizes=(1,))  # the stem is all we need.
  x = jax.random.normal(KEY, (1, 33, 40, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(KEY, x)
  _, state = jax.jit(
    functools.partial(
      model.apply, train=False, capture_intermediates=lambda module, _: module.name == 'conv_init'
    )
  )(variables, x)
  (y,) = state['intermediates']['conv_init']['__call__']
  assert y.shape == (1, 17, 20, 64)
  expected = jax.lax.conv_general_dilated(
    x,
    variables['params']['conv_init']['kernel'],
    (2, 2),
    ((3, 3), (3, 3)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_layer_responses_values():
  model, variables = _cifar20_unrolled()
  x = _x(32, 4)
  # Non-trivial running statistics, so the eval-mode BN is not near-identity.
  _, state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  variables = {'params': variables['params'], 'batch_stats': state['batch_stats']}
  logits, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  assert set(state) == {'intermediates'}
  responses = layer_responses(state['intermediates'])
  assert len(responses) == 18
  for r in responses:
    assert np.all(np.isfinite(r)) and float(r.std()) > 0
  # The first block's two responses, by hand: after BN, before the addition
  # and the ReLU (so they have negative entries).
  p, s = variables['params'], variables['batch_stats']
  h = nn.relu(_bn_eval(_conv(x, p['conv_init']['kernel']), p['bn_init'], s['bn_init']))
  b = 'stage1_block1'
  r1 = _bn_eval(_conv(h, p[b]['conv1']['kernel']), p[b]['bn1'], s[b]['bn1'])
  r2 = _bn_eval(_conv(nn.relu(r1), p[b]['conv2']['kernel']), p[b]['bn2'], s[b]['bn2'])
  np.testing.assert_allclose(responses[0], r1, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(responses[1], r2, rtol=1e-4, atol=1e-4)
  assert float(responses[0].min()) < 0 and float(responses[1].min()) < 0
  # Recording changes nothing else.
  np.testing.assert_array_equal(logits, model.apply(variables, x, train=False))


def _bottleneck(**options):
  """A stand-alone stride-2 option-B bottleneck block: 8 -> 16 channels."""
  return models.BottleneckBlock(
    4,
    2,
    conv=functools.partial(nn.Conv, use_bias=False),
    norm=functools.partial(nn.BatchNorm, use_running_average=True),
    shortcut='B',
    **options,
  )


@pytest.mark.parametrize('downsample_on_3x3', [False, True])
def test_bottleneck_response(downsample_on_3x3):
  # The recorded response is the 3x3's BN output, before its ReLU; the
  # stride sits on the first 1x1 (paper) or on the 3x3 (v1.5).
  block = _bottleneck(downsample_on_3x3=downsample_on_3x3)
  x = jax.random.normal(KEY, (1, 4, 4, 8))
  variables = block.init(KEY, x)
  _, state = block.apply(variables, x, mutable=['intermediates'])
  (response,) = state['intermediates']['response2']
  p, s = variables['params'], variables['batch_stats']
  s1, s3 = (1, 2) if downsample_on_3x3 else (2, 1)
  h = nn.relu(_bn_eval(_conv(x, p['conv1']['kernel'], s1), p['bn1'], s['bn1']))
  expected = _bn_eval(_conv(h, p['conv2']['kernel'], s3), p['bn2'], s['bn2'])
  assert response.shape == (1, 2, 2, 4)
  np.testing.assert_allclose(response, expected, rtol=1e-5, atol=1e-5)
  assert float(response.min()) < 0


def test_no_responses_recorded_without_intermediates():
  model, variables = _cifar20_unrolled()
  assert 'intermediates' not in _cifar20_variables()
  x = _x(32, 4)
  assert isinstance(model.apply(variables, x, train=False), jax.Array)
  _, state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert set(state) == {'batch_stats'}


def test_scan_blocks_false_is_the_same_network():
  scanned, variables = models.create_model('cifar_resnet20'), _cifar20_variables()
  unrolled, converted = _cifar20_unrolled()
  shapes = _init_shapes(unrolled, 32)
  assert jax.tree.structure(converted) == jax.tree.structure(shapes)
  for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(shapes)):
    assert a.shape == b.shape
  # Train mode: also checks the scanned BN statistics updates.
  x = _x(32, 4)
  mutable = ['batch_stats', 'intermediates']
  out_s, state_s = scanned.apply(variables, x, train=True, mutable=mutable)
  out_u, state_u = unrolled.apply(converted, x, train=True, mutable=mutable)
  np.testing.assert_allclose(out_s, out_u, rtol=1e-4, atol=1e-4)
  stats_s = unscan(state_s['batch_stats'])
  assert jax.tree.structure(stats_s) == jax.tree.structure(state_u['batch_stats'])
  for a, b in zip(jax.tree.leaves(stats_s), jax.tree.leaves(state_u['batch_stats'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Responses come out in the same (depth) order; each block has its own
  # weights, so a misordering would show.
  resp_s = layer_responses(state_s['intermediates'])
  resp_u = layer_responses(state_u['intermediates'])
  assert len(resp_s) == len(resp_u) == 18
  for a, b in zip(resp_s, resp_u):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_layer_responses_order():
  # Hand-made collections, listed out of order; each value is its depth index.
  def r(*values):
    return (jnp.array(values, jnp.float32),)

  unrolled = {
    'stage2_block1': {'response2': r(21), 'response1': r(20)},
    'stage1_block10': {'response1': r(18), 'response2': r(19)},
    'stage1_block1': {'response1': r(0), 'response2': r(1)},
  }
  for j in range(2, 10):
    unrolled[f'stage1_block{j}'] = {'response1': r(2 * j - 2), 'response2': r(2 * j - 1)}
  got = [float(a[0]) for a in layer_responses(unrolled)]
  assert got == list(range(22))

  def stacked(*values):  # scanned: (length, ...) per response.
    return (jnp.array(values, jnp.float32)[:, None],)

  scanned = {
    'stage2_block1': {'response1': r(8), 'response2': r(9)},
    'stage1_rest': {'response2': stacked(3, 5, 7), 'response1': stacked(2, 4, 6)},
    'stage1_block1': {'response1': r(0), 'response2': r(1)},
  }
  got = [float(a[0]) for a in layer_responses(scanned)]
  assert got == list(range(10))


def _bn_scales(params):
  """{'block/.../bnX': scale} of every BN inside the stages."""
  return {
    path[: -len('/scale')]: leaf
    for path, leaf in zip(_paths(params), jax.tree.leaves(params))
    if path.startswith('stage') and path.endswith('/scale')
  }


def test_zero_init_last_bn_basic():
  model = models.create_model('cifar_resnet20', zero_init_last_bn=True, scan_blocks=False)
  x = _x(32, 4)
  variables = model.init(KEY, x[:1], train=False)
  scales = _bn_scales(variables['params'])
  blocks = [f'stage{i}_block{j}' for i in (1, 2, 3) for j in (1, 2, 3)]
  assert sorted(k for k in scales if k.endswith('bn2')) == [f'{b}/bn2' for b in blocks]
  for path, scale in scales.items():
    np.testing.assert_array_equal(scale, 0.0 if path.endswith('bn2') else 1.0)
  # The residual branches are switched off: their last responses are zero.
  _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  responses = layer_responses(state['intermediates'])
  for r in responses[1::2]:
    np.testing.assert_array_equal(r, 0.0)
  assert float(jnp.abs(responses[0]).max()) > 0
  # Default: every BN scale is one (scanned stacks included).
  for scale in _bn_scales(_cifar20_variables()['params']).values():
    np.testing.assert_array_equal(scale, 1.0)


@pytest.mark.parametrize('zero_init', [False, True])
def test_zero_init_last_bn_bottleneck(zero_init):
  block = _bottleneck(zero_init_last_bn=zero_init)
  scales = _bn_scales({'stage1_block1': block.init(KEY, jnp.ones((1, 4, 4, 8)))['params']})
  assert sorted(scales) == ['stage1_block1/' + k for k in ('bn1', 'bn2', 'bn3', 'shortcut/bn')]
  assert scales['stage1_block1/bn3'].shape == (16,)
  for path, scale in scales.items():
    # Only the residual branch's last BN; not bn1/bn2, not the projection's.
    last = zero_init and path.endswith('/bn3')
    np.testing.assert_array_equal(scale, 0.0 if last else 1.0)


def test_he_init():
  variables = _cifar20_variables()
  params = variables['params']
  he_std = np.sqrt(2.0 / (3 * 3 * 64))  # 3x3 convs over 64 channels.
  kernels = [params['stage3_block1']['conv2']['kernel']]
  kernels += list(params['stage3_rest']['conv1']['kernel'])  # two blocks.
  kernels += list(params['stage3_rest']['conv2']['kernel'])
  for k in kernels:
    assert k.shape == (3, 3, 64, 64)
    k = np.asarray(k)
    assert abs(k.std() / he_std - 1) < 0.05
    assert abs(k.mean()) < 0.05 * he_std
    # A plain Gaussian (Caffe's "msra"), not one truncated at 2 std.
    assert np.abs(k).max() > 3 * he_std
  # Every scanned block draws its own weights.
  assert not np.allclose(kernels[1], kernels[2])
  # fc: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), zero bias.
  fc = params['fc']
  bound = 1 / np.sqrt(64)
  assert fc['kernel'].shape == (64, 10)
  assert float(jnp.abs(fc['kernel']).max()) <= bound
  assert float(jnp.abs(fc['kernel']).max()) > 0.8 * bound
  np.testing.assert_array_equal(fc['bias'], 0.0)
  # BN: scale 1, bias 0; running mean 0, var 1.
  for path, leaf in zip(_paths(variables), jax.tree.leaves(variables)):
    if path.endswith('/scale') or path.endswith('/var'):
      np.testing.assert_array_equal(leaf, 1.0, err_msg=path)
    elif '/bn' in path:
      np.testing.assert_array_equal(leaf, 0.0, err_msg=path)


def test_unknown_model_name():
  with pytest.raises(ValueError, match='resnet50') as info:
    models.create_model('resnet19')
  assert 'cifar_resnet110' in str(info.value)


def test_unknown_option():
  with pytest.raises(ValueError, match='shortcut') as info:
    models.create_model('resnet18', foo=1)
  assert 'foo' in str(info.value)


@pytest.mark.parametrize(
  'options',
  [
    {'shortcut': 'D'},
    {'bn_group_size': 0},
    {'bn_group_size': -2},
  ],
)
def test_bad_option_values(options):
  with pytest.raises(ValueError):
    models.create_model('resnet18', **options)


def test_option_checks_name_the_field_to_change():
  """`check_options` is what `create_model` and config validation both run."""
  models.check_options({'shortcut': 'C', 'bn_group_size': None, 'bn_momentum': 0.99})
  with pytest.raises(ValueError, match=r'^model_options\.bn_momentum=1\.5: it must be '):
    models.check_options({'bn_momentum': 1.5}, prefix='model_options.')
  with pytest.raises(ValueError, match=r"\['model_options\.foo'\]; valid options: num_classes"):
    models.check_options({'foo': 1}, prefix='model_options.')


def test_helpers_of_the_forward_pass_add_no_method_calls():
  """The stem, stage and pool helpers run as plain code inside
  `ResNet.__call__`: capturing every method's output records the module
  calls only, as `research.activations` expects."""
  model = models.ResNet(
    stage_sizes=(1, 1), block_cls=models.BasicBlock, num_filters=4, stem='cifar', num_classes=3
  )
  variables = model.init(KEY, _x(8), train=False)
  _, state = model.apply(
    variables, _x(8), train=False, capture_intermediates=lambda mdl, name: True, mutable=True
  )
  assert sorted(state['intermediates']) == [
    '__call__',
    'bn_init',
    'conv_init',
    'fc',
    'stage1_block1',
    'stage2_block1',
  ]


def _tiny_apply(model, train=False, batch=4, seed=0):
  """(logits, variables, updated batch_stats) of `model` on a random 8x8 batch."""
  x = jax.random.normal(jax.random.key(seed), (batch, 8, 8, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  if train:
    logits, state = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return logits, variables, state['batch_stats']
  return model.apply(variables, x, train=False), variables, None


def _num_params(model, size=8):
  return sum(p.size for p in jax.tree.leaves(_init_shapes(model, size)['params']))


def _check_num_classes():
  logits, _, _ = _tiny_apply(models.create_model('cifar_resnet20', num_classes=3))
  assert logits.shape == (4, 3)


def _check_shortcut():
  counts = [_num_params(models.create_model('cifar_resnet20', shortcut=o)) for o in 'ABC']
  assert counts[0] < counts[1] < counts[2]  # A: no projection; B: 2; C: every block.


def _check_dtype():
  model = models.create_model('cifar_resnet20', dtype=jnp.bfloat16)
  x = jnp.zeros((1, 8, 8, 3))

  def responses(x):
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
    return layer_responses(state['intermediates'])

  assert {r.dtype for r in jax.eval_shape(responses, x)} == {jnp.dtype(jnp.bfloat16)}


def _check_bn_momentum():
  # From the initial running mean 0, one step leaves (1 - momentum) x batch mean.
  stats = {
    m: _tiny_apply(models.create_model('cifar_resnet20', bn_momentum=m), True)[2]
    for m in (0.0, 0.75)
  }
  np.testing.assert_allclose(
    stats[0.75]['bn_init']['mean'], 0.25 * stats[0.0]['bn_init']['mean'], rtol=1e-5, atol=1e-7
  )


def _check_bn_epsilon():
  # Eval mode at init (running mean 0, var 1): every BN divides by sqrt(1 + eps).
  def first_response(eps):
    model = models.create_model('cifar_resnet20', bn_epsilon=eps)
    _, variables, _ = _tiny_apply(model)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
    return layer_responses(state['intermediates'])[0]

  # Stem BN, ReLU (positively homogeneous), conv, BN: scaled by (1 + eps)^-1.
  np.testing.assert_allclose(first_response(3.0), first_response(0.0) / 4, rtol=1e-4, atol=1e-6)


def _check_bn_group_size():
  _, _, whole = _tiny_apply(models.create_model('cifar_resnet20'), True)
  _, _, grouped = _tiny_apply(models.create_model('cifar_resnet20', bn_group_size=2), True)
  # Running statistics: the mean over groups of group means equals the batch
  # mean, but the mean of group variances is below the batch variance.
  np.testing.assert_allclose(
    grouped['bn_init']['mean'], whole['bn_init']['mean'], rtol=1e-4, atol=1e-6
  )
  assert np.all(grouped['bn_init']['var'] <= whole['bn_init']['var'] + 1e-6)
  assert np.any(grouped['bn_init']['var'] < whole['bn_init']['var'] - 1e-6)


def _check_zero_init_last_bn():
  _, variables, _ = _tiny_apply(models.create_model('cifar_resnet20', zero_init_last_bn=True))
  assert not np.any(variables['params']['stage1_block1']['bn2']['scale'])
  assert np.all(variables['params']['stage1_block1']['bn1']['scale'] == 1)


def _check_downsample_on_3x3():
  # Same weights, the stride moves from the 1x1 to the 3x3: more multiply-adds.
  v1, v15 = (models.create_model('resnet50', downsample_on_3x3=d) for d in (False, True))
  assert _num_params(v1, 32) == _num_params(v15, 32)
  assert complexity.count_mult_adds(v15, 64) > complexity.count_mult_adds(v1, 64)


def _check_scan_blocks():
  stacked = _init_shapes(models.create_model('cifar_resnet20'), 8)['params']
  unrolled = _init_shapes(models.create_model('cifar_resnet20', scan_blocks=False), 8)['params']
  assert stacked['stage1_rest']['conv1']['kernel'].shape == (2, 3, 3, 16, 16)
  assert unrolled['stage1_block3']['conv1']['kernel'].shape == (3, 3, 16, 16)


OPTION_CHECKS = {
  name[len('_check_') :]: fn for name, fn in list(globals().items()) if name.startswith('_check_')
}


@pytest.mark.parametrize(
  'option',
  [pytest.param(o, marks=pytest.mark.slow) if o == 'bn_group_size' else o for o in models.OPTIONS],
)
def test_every_option_has_its_effect(option):
  """Each option of `models.OPTIONS` changes what it says (a new option
  without a check here fails)."""
  OPTION_CHECKS[option]()


@pytest.mark.slow
def test_resnet1202_forward_backward_compiles():
  model = models.create_model('cifar_resnet1202')
  x = _spec(32)
  variables = _init_shapes(model, 32, batch=2)

  def loss_fn(params, batch_stats, x):
    logits, state = model.apply(
      {'params': params, 'batch_stats': batch_stats}, x, train=True, mutable=['batch_stats']
    )
    return -jax.nn.log_softmax(logits)[:, 0].mean(), state

  lowered = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(
    variables['params'], variables['batch_stats'], x
  )
  compiled = lowered.compile()
  # The 199 identical blocks of each stage run as one loop body, not unrolled:
  # the program stays small (an unrolled one has thousands of convolutions).
  hlo = compiled.as_text()
  assert 'while' in hlo
  assert hlo.count('convolution(') < 200, hlo.count('convolution(')
  (loss, state), grads = lowered.out_info
  assert loss.shape == ()
  assert jax.tree.structure(grads) == jax.tree.structure(variables['params'])
  for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(variables['params'])):
    assert g.shape == p.shape
  # 199 blocks per stage are stacked into one scanned body.
  assert variables['params']['stage1_rest']['conv1']['kernel'].shape == (199, 3, 3, 16, 16)
  assert jax.tree.structure(state['batch_stats']) == jax.tree.structure(variables['batch_stats'])
