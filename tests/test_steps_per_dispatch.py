"""K train steps per compiled call, and CIFAR's training split on the devices.

K steps in one `lax.scan` do the same arithmetic on the same batches with the
same random numbers as K calls, but XLA compiles the loop body as its own
computation and may order a reduction differently (and on CPU, strided
convolutions in the loop are stride-1 ones subsampled: `ResNet.in_step_loop`):
results agree to float32 rounding (measured: 1-ulp loss differences, params
within 1.5e-6 after 8 steps), not bit for bit. Before that CPU path, a fully
unrolled scan was bit-identical on CPU, but it compiles K copies of the step.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import config_validation, errors
from resnet_jax.training import loop

from helpers import (
  final_params,
  make_trainer,
  patch_compiled_step,
  saved_steps,
  tiny_config,
  tiny_data,
  tiny_splits,
  zero_norm,
)


def dispatch_config(k=1, resident=False, **schedule):
  """tiny_config with every interval a multiple of 4 (so K = 1, 2, 4 all fit)."""
  config = tiny_config(
    total_steps=schedule.pop('total_steps', 8),
    boundaries=schedule.pop('boundaries', (3, 6)),
    **schedule,
  )
  config.log_every_steps = 4
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  config.steps_per_dispatch = k
  config.input.device_resident = resident
  return config


def host_batches(n_steps, batch=16):
  """`n_steps` different batches of the toy problem, and their indices into it."""
  split = tiny_data(64)
  rng = np.random.default_rng(1)
  index = np.stack([rng.permutation(64)[:batch] for _ in range(n_steps)]).astype(np.int32)
  return split, index


@pytest.mark.slow
@pytest.mark.parametrize('resident', [False, True])
def test_k_steps_in_one_call_equal_k_single_steps(resident):
  """Warm-up (ended by its cap at step 5) and lr boundaries (3, 6) fall inside
  the calls: the per-step schedule must be followed within a scan."""
  schedule = dict(warmup_lr=0.01, warmup_until_error=1e-6, warmup_max_steps=5)
  single = make_trainer(dispatch_config(1, **schedule))
  multi = make_trainer(dispatch_config(4, resident, **schedule))
  split, index = host_batches(8)

  state, singles = single.init_fn(zero_norm(single)), []
  for i in range(8):
    batch = single.to_global({'image': split.images[index[i]], 'label': split.labels[index[i]]})
    state, metrics = single.train_fn(state, batch, {})
    singles.append(jax.device_get(metrics))

  resident_arrays = multi.put_resident({'image': split.images, 'label': split.labels})
  stacked, multis = multi.init_fn(zero_norm(multi)), []
  for call in range(2):
    rows = index[4 * call : 4 * call + 4]
    if resident:
      batch = multi.to_global({'index': rows})
    else:
      batch = multi.to_global({'image': split.images[rows], 'label': split.labels[rows]})
    stacked, metrics = multi.train_fn(stacked, batch, resident_arrays if resident else {})
    metrics = jax.device_get(metrics)
    assert metrics['train_loss'].shape == (4,)  # One entry per step.
    multis += [{k: v[i] for k, v in metrics.items()} for i in range(4)]

  assert int(stacked.step) == 8
  lrs = [float(m['learning_rate']) for m in multis]
  np.testing.assert_allclose(lrs, [0.01] * 5 + [0.01, 0.001, 0.001], rtol=1e-6)
  for a, b in zip(singles, multis):
    np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-5)
    np.testing.assert_allclose(a['grad_norm'], b['grad_norm'], rtol=1e-4)
  _assert_same_state(state, stacked)


def _assert_same_state(a, b):
  """Same params and BN statistics (to rounding), momentum (per-element
  gradients amplify rounding: compared by norm), step, warm-up state, rng."""
  for x, y in zip(
    jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))
  ):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=2e-5)
  momentum = lambda s: float(optax.global_norm(s.opt_state.inner_state[1][0].trace))
  assert momentum(a) == pytest.approx(momentum(b), rel=1e-3)
  assert int(a.step) == int(b.step) and bool(a.warmup_active) == bool(b.warmup_active)
  assert float(a.train_error_ema) == pytest.approx(float(b.train_error_ema), abs=1e-6)
  np.testing.assert_array_equal(jax.random.key_data(a.rng), jax.random.key_data(b.rng))


@pytest.mark.slow
def test_resident_gather_is_local_to_each_device():
  """Replicated split, sharded indices: each device gathers its own examples;
  the compiled call moves no images between devices."""
  config = dispatch_config(4, resident=True)
  trainer = make_trainer(config)
  split = tiny_data(64)
  resident = trainer.put_resident({'image': split.images, 'label': split.labels})
  hlo = trainer.compile_train(16, resident).as_text()
  assert 'all-gather' not in hlo and 'all-to-all' not in hlo
  assert 'while' in hlo  # The K steps are one loop, not K unrolled copies.
  batch = trainer.to_global({'index': np.zeros((4, 16), np.int32)})
  assert batch['index'].sharding.spec == jax.sharding.PartitionSpec(None, 'data')


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU path only')
@pytest.mark.slow
def test_strided_convolutions_in_the_loop_take_the_fast_cpu_path():
  """XLA:CPU runs strided-conv gradients 50-100x slower inside a loop: there
  they are stride-1 forward convolutions, subsampled (`ResNet.in_step_loop`).
  A single step keeps XLA's strided convolutions."""
  convs = lambda hlo: re.findall(r'convolution\(.*?window=\{([^}]*)\}', hlo)
  single = make_trainer(dispatch_config(1)).compile_train(16).as_text()
  multi = make_trainer(dispatch_config(2)).compile_train(16).as_text()
  assert any('stride=2x2' in w for w in convs(single))  # The check can fail.
  assert convs(multi) and not any('stride=' in w for w in convs(multi)), convs(multi)


@pytest.mark.slow
def test_loop_with_k_steps_and_resume_under_another_k_equals_single_steps(tmp_path):
  data = tiny_splits()
  loop.train_and_evaluate(dispatch_config(1), str(tmp_path / 'single'), data=data)
  # K=2 with the split on the devices, stopped at 4; resumed with K=4.
  first = dispatch_config(2, resident=True)
  first.stop_after_steps = 4
  loop.train_and_evaluate(first, str(tmp_path / 'multi'), data=data)
  assert saved_steps(tmp_path / 'multi', first) == [4]
  loop.train_and_evaluate(dispatch_config(4, resident=True), str(tmp_path / 'multi'), data=data)

  config = dispatch_config(1)
  single, single_data = final_params(str(tmp_path / 'single'), config)
  multi, multi_data = final_params(str(tmp_path / 'multi'), config)
  assert int(single.step) == int(multi.step) == 8
  assert single_data == multi_data  # Grain's position counts single batches.
  _assert_same_state(single, multi)

  def records(name):
    return [json.loads(line) for line in open(tmp_path / name / 'metrics.jsonl')]

  # Logged at the same steps, with means over the same per-step losses.
  logged = {
    name: {r['step']: r for r in records(name) if 'train_loss' in r} for name in ('single', 'multi')
  }
  assert sorted(logged['single']) == sorted(logged['multi']) == [4, 8]
  for step in (4, 8):
    assert logged['multi'][step]['train_loss'] == pytest.approx(
      logged['single'][step]['train_loss'], rel=1e-4
    )
  tests = {
    name: [r['test_loss'] for r in records(name) if 'test_loss' in r]
    for name in ('single', 'multi')
  }
  assert len(tests['single']) == 2
  assert tests['multi'] == pytest.approx(tests['single'], rel=1e-4)


def test_non_finite_loss_is_caught_at_its_own_step_inside_a_call(tmp_path, monkeypatch):
  def on_call(n, out):
    state, metrics = out
    if n == 2:  # The second call runs steps 3 and 4; step 4 "diverges".
      metrics = dict(metrics, train_loss=metrics['train_loss'].at[1].set(jnp.nan))
    return state, metrics

  patch_compiled_step(monkeypatch, on_call)
  config = dispatch_config(2)
  config.checkpoint_every_steps = 2
  with pytest.raises(errors.DivergedError, match=r'train_loss=nan at step 4;.*step 2\)'):
    loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  assert saved_steps(tmp_path, config) == [2]


def test_intervals_that_k_does_not_divide_are_refused():
  config = dispatch_config(3)
  with pytest.raises(
    errors.ConfigError,
    match=r'steps_per_dispatch=3 must divide '
    r'log_every_steps=4, eval_every_steps=4, checkpoint_every_steps=4, '
    r'schedule.total_steps=8',
  ):
    config_validation.validate(config, 8)
  config = dispatch_config(0)
  with pytest.raises(errors.ConfigError, match='positive integer'):
    config_validation.validate(config, 8)
  config_validation.validate(dispatch_config(4), 8)


@pytest.mark.slow
def test_resume_at_a_step_that_k_does_not_divide_is_refused(tmp_path):
  config = dispatch_config(1)
  config.stop_after_steps = 2
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  with pytest.raises(
    errors.ConfigError, match='holds step 2, not a multiple of steps_per_dispatch=4'
  ):
    loop.train_and_evaluate(dispatch_config(4), str(tmp_path), data=tiny_splits())
  assert saved_steps(tmp_path, config) == [2]
