"""BatchNorm over groups of examples (`bn_group_size`), within and across devices.

The model sees the global batch under `jax.jit`, so grouped statistics must not
depend on how the batch is sharded: groups inside a device and groups that
span whole devices give the single-device result, and XLA computes them with
all-reduces of per-channel statistics, never by gathering activations.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import config_lib, config_validation, models

# --- GroupBatchNorm = BatchNorm on each group ------------------------------


def _grouped_input(num_groups, group_size, shape=(3, 3, 5)):
  """Groups with clearly different means and spreads, so that statistics over
  any other split of the batch (strided, whole batch) give other outputs.
  The per-group references below slice consecutive examples, so this also
  pins down which examples form a group."""
  x = jax.random.normal(jax.random.key(0), (num_groups, group_size) + shape)
  offset = jnp.arange(num_groups, dtype=jnp.float32).reshape(-1, 1, 1, 1, 1) * 3.0
  spread = 1.0 + jnp.arange(num_groups, dtype=jnp.float32).reshape(-1, 1, 1, 1, 1)
  return (x * spread + offset).reshape((num_groups * group_size,) + shape)


def _variables(features, rng=1):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(rng), 4)
  return {
    'params': {
      'scale': 1.0 + 0.1 * jax.random.normal(k1, (features,)),
      'bias': 0.1 * jax.random.normal(k2, (features,)),
    },
    'batch_stats': {
      'mean': 0.5 * jax.random.normal(k3, (features,)),
      'var': 1.0 + jax.random.uniform(k4, (features,)),
    },
  }


@pytest.mark.parametrize('group_size,num_groups', [(4, 3), (1, 5), (6, 1)])
def test_group_batchnorm_is_batchnorm_on_each_group(group_size, num_groups):
  momentum, epsilon = 0.9, 1e-5
  x = _grouped_input(num_groups, group_size)
  variables = _variables(x.shape[-1])
  gbn = models.GroupBatchNorm(
    group_size=group_size, use_running_average=False, momentum=momentum, epsilon=epsilon
  )
  y, updates = gbn.apply(variables, x, mutable=['batch_stats'])

  # Flax's BatchNorm on each group alone, from the same variables.
  bn = nn.BatchNorm(
    use_running_average=False, momentum=momentum, epsilon=epsilon, use_fast_variance=False
  )
  outs, means, vars_ = [], [], []
  for k in range(num_groups):
    yk, uk = bn.apply(variables, x[k * group_size : (k + 1) * group_size], mutable=['batch_stats'])
    outs.append(yk)
    means.append(uk['batch_stats']['mean'])
    vars_.append(uk['batch_stats']['var'])
  np.testing.assert_allclose(y, jnp.concatenate(outs), rtol=1e-5, atol=1e-5)
  # Each group's BN moves the running stats towards its own statistics; the
  # grouped layer moves them towards the mean over groups (linear, so equal
  # to the mean of the per-group updates).
  np.testing.assert_allclose(
    updates['batch_stats']['mean'], np.mean(means, 0), rtol=1e-6, atol=1e-6
  )
  np.testing.assert_allclose(updates['batch_stats']['var'], np.mean(vars_, 0), rtol=1e-6, atol=1e-6)

  # The same by hand: biased variance over (examples, height, width) of a group.
  g = np.asarray(x, np.float64).reshape((num_groups, group_size) + x.shape[1:])
  mu = g.mean(axis=(1, 2, 3), keepdims=True)
  var = ((g - mu) ** 2).mean(axis=(1, 2, 3), keepdims=True)
  p = {k: np.asarray(v, np.float64) for k, v in variables['params'].items()}
  expected = ((g - mu) / np.sqrt(var + epsilon) * p['scale'] + p['bias']).reshape(x.shape)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  old = {k: np.asarray(v, np.float64) for k, v in variables['batch_stats'].items()}
  np.testing.assert_allclose(
    updates['batch_stats']['mean'],
    momentum * old['mean'] + (1 - momentum) * mu.reshape(num_groups, -1).mean(0),
    rtol=1e-6,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    updates['batch_stats']['var'],
    momentum * old['var'] + (1 - momentum) * var.reshape(num_groups, -1).mean(0),
    rtol=1e-6,
    atol=1e-6,
  )


# --- Sharded over 8 devices = one device -----------------------------------

_COLLECTIVE = re.compile(
  r'=\s+(?P<type>.*?)\s+(?P<op>all-reduce|all-gather|all-to-all|'
  r'collective-permute|reduce-scatter|collective-broadcast)(?:-start)?\('
)


def _group_size(line, num_devices):
  """Replica-group size of one HLO collective, in any of XLA's spellings."""
  m = re.search(r'replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}', line)
  if m:  # mesh['axis_0'=4,'axis_1'=2] {'axis_1'}
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    return int(np.prod([int(sizes[a]) for a in re.findall(r"'(\w+)'", m.group(2))]))
  m = re.search(r'replica_groups=\[([\d,]+)\]<=', line)
  if m:  # iota: [4,2]<=[8]
    return int(m.group(1).split(',')[-1])
  m = re.search(r'replica_groups=\{\{([\d,]*)\}', line)
  if m:  # explicit: {{0,1},{2,3},...}
    return len(m.group(1).split(','))
  if re.search(r'replica_groups=\{\}', line):
    return num_devices
  raise AssertionError(f'cannot read the replica groups of: {line[:300]}')


def _collectives(hlo, num_devices):
  """(op, group size, element counts of the result's arrays) per collective."""
  out = []
  for line in hlo.splitlines():
    m = _COLLECTIVE.search(line)
    if m:
      sizes = [
        int(np.prod([int(d) for d in dims.split(',') if d]))
        for dims in re.findall(r'[a-z]+\d*\[([\d,]*)\]', m.group('type'))
      ]
      out.append((m.group('op'), _group_size(line, num_devices), sizes))
  return out


def _loss_grads_and_stats(model, variables, x, labels):
  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      x,
      train=True,
      mutable=['batch_stats'],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    variables['params']
  )
  return loss, logits, batch_stats, grads


@pytest.mark.slow
@pytest.mark.parametrize('group_size', [2, 4, 8])
def test_sharded_equals_one_device(group_size):
  """Batch 16 on 8 devices (2 each): G=2 inside a device, G=4, 8 over 2, 4."""
  batch, num_devices = 16, 8
  assert len(jax.devices()) == num_devices
  model = models.create_model('cifar_resnet20', num_classes=10, bn_group_size=group_size)
  # NumPy inputs: every jax op run outside jit is one more (cold) compile.
  rng = np.random.default_rng(0)
  # Per-example offsets, so that groups see different statistics.
  x = (
    rng.standard_normal((batch, 8, 8, 3)) + np.linspace(-1.0, 1.0, batch).reshape(-1, 1, 1, 1)
  ).astype(np.float32)
  labels = rng.integers(0, 10, batch).astype(np.int32)
  # One compiled init: eager init dispatches (and compiles) op by op.
  variables = jax.jit(lambda rng, x: model.init(rng, x, train=False))(jax.random.key(2), x[:1])
  fn = lambda v, x, y: _loss_grads_and_stats(model, v, x, y)

  one = jax.devices()[0]
  expected = jax.jit(fn)(*jax.device_put((variables, x, labels), one))
  jax.block_until_ready(expected)

  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  args = (
    jax.device_put(variables, replicated),
    jax.device_put(x, sharded),
    jax.device_put(labels, sharded),
  )
  assert args[1].addressable_shards[0].data.shape[0] == batch // num_devices
  # Logits stay sharded: replicating them would add an all-gather of outputs.
  compiled = (
    jax.jit(
      fn,
      in_shardings=(replicated, sharded, sharded),
      out_shardings=(replicated, sharded, replicated, replicated),
    )
    .lower(*args)
    .compile()
  )
  got = compiled(*args)

  names = ('loss', 'logits', 'batch_stats', 'grads')
  for name, a, b in zip(names, got, expected):
    for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
      # Observed: at most 2.2e-6 apart (logits), from the order of reductions.
      np.testing.assert_allclose(
        u, v, rtol=1e-5, atol=5e-6, err_msg=f'{name}{jax.tree_util.keystr(path)}'
      )

  # How XLA did it: all-reduces only; where a group spans d devices, the
  # statistics go over replica groups of d, and are per-channel vectors.
  collectives = _collectives(compiled.as_text(), num_devices)
  assert {op for op, _, _ in collectives} == {'all-reduce'}, collectives
  per_device = batch // num_devices
  if group_size > per_device:
    spans = group_size // per_device
    stats = [sizes for _, n, sizes in collectives if n == spans]
    assert stats, collectives
    assert max(max(sizes) for sizes in stats) <= 64, stats  # <= channels.
  else:
    assert all(n == num_devices for _, n, _ in collectives), collectives


# --- Validation -------------------------------------------------------------


@pytest.mark.parametrize('group_size', [1, 2, 8, 16, 32, 64, 128])
def test_validate_accepts_groups_within_or_over_whole_devices(group_size):
  """Batch 128 on 8 devices: 16 per device; 32, 64, 128 span 2, 4, 8 devices."""
  config = config_lib.cifar10('cifar_resnet20')
  config.model_options.bn_group_size = group_size
  config_validation.validate(config, num_devices=8)


@pytest.mark.parametrize('group_size', [3, 24, 48, 96, 256])
def test_validate_rejects_groups_that_do_not_fit(group_size):
  """None divides the batch of 128 (the straddling case is in the next test)."""
  config = config_lib.cifar10('cifar_resnet20')
  config.model_options.bn_group_size = group_size
  with pytest.raises(ValueError) as error:
    config_validation.validate(config, num_devices=8)
  message = str(error.value)
  assert f'model_options.bn_group_size={group_size}' in message
  assert 'per-device batch 16' in message
  assert '1, 2, 4, 8, 16, 32, 64, 128' in message  # Every value that works.
  assert '\n' not in message


def test_validate_spanning_groups_on_more_processes():
  config = config_lib.cifar10('cifar_resnet20')
  config.model_options.bn_group_size = 64
  config_validation.validate(config, num_devices=8, num_processes=2)  # Spans 4 of 8.
  config.input.batch_size = 96  # 12 per device: 6 within, 24 spans 2, 8 straddles.
  for group_size in (6, 24):
    config.model_options.bn_group_size = group_size
    config_validation.validate(config, num_devices=8)
  config.model_options.bn_group_size = 8
  fits = '1, 2, 3, 4, 6, 12, 24, 48, 96'
  with pytest.raises(ValueError, match=f'bn_group_size=8 .*set it to one of {fits}$'):
    config_validation.validate(config, num_devices=8)
