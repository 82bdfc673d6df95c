"""Tests of the train step, the training loop, checkpoints and bad input."""

import functools
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import checkpointing, cifar_input, config_lib, data, evaluation, train

IMAGE = (8, 8, 3)  # CIFAR nets run on any size >= 4 px; tiny keeps compiles short.


def tiny_config(**schedule):
  config = config_lib.cifar10('cifar_resnet20')
  config.input.batch_size = 16
  config.input.eval_batch_size = 16
  config.schedule.total_steps = schedule.pop('total_steps', 6)
  config.schedule.boundaries = schedule.pop('boundaries', (3, 5))
  config.schedule.update(schedule)
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  return config


def tiny_data(n=64, seed=0):
  """A learnable toy problem: the label is the brightest of 10 bands."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.int32)
  images = rng.integers(0, 100, (n,) + IMAGE).astype(np.uint8)
  images[np.arange(n), labels % 8, :, labels // 8] += 150
  return cifar_input.ArraySplit(images, labels)


def tiny_splits():
  return tiny_data(64, 0), {'test': tiny_data(37, 1)}


def make_trainer(config, devices=None):
  model = train.create_model(config)
  dataset = data.create(config, preloaded=tiny_splits())
  return train.Trainer(config, model, train.make_mesh(devices), dataset)


def zero_norm(trainer):
  """Normalisation to about [-2, 2], as real training's (raw 0..255 pixels
  make logits of hundreds: saturated softmax ties, amplified rounding)."""
  return jax.device_put({'mean': np.full(IMAGE, 127.5, np.float32),
                         'std': np.full(3, 64.0, np.float32)}, trainer.replicated)


def fixed_batch(trainer, n=16):
  split = tiny_data(n)
  return trainer.to_global({'image': split.images, 'label': split.labels})


def run_steps(trainer, num_steps, batch, state=None):
  state = trainer.init_fn(zero_norm(trainer)) if state is None else state
  losses = []
  for _ in range(num_steps):
    state, metrics = trainer.train_fn(state, batch)
    losses.append(float(metrics['train_loss']))
  return state, losses


def test_a_few_steps_lower_the_loss():
  trainer = make_trainer(tiny_config(base_lr=0.05, total_steps=100, boundaries=()))
  _, losses = run_steps(trainer, 8, fixed_batch(trainer))
  assert np.mean(losses[-3:]) < 0.85 * losses[0], losses


def test_sharded_step_matches_single_device_and_compiles_once():
  assert jax.device_count() == 8, 'conftest.py sets 8 fake CPU devices'
  config = tiny_config()
  sharded = make_trainer(config)
  single = make_trainer(config, jax.devices()[:1])
  state, batch = sharded.init_fn(zero_norm(sharded)), fixed_batch(sharded)
  compiles = []
  listener = lambda name, *_, **__: compiles.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    state8, losses8 = run_steps(sharded, 3, batch, state)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  state1, losses1 = run_steps(single, 3, fixed_batch(single))
  np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
  leaves8 = jax.tree.leaves(jax.device_get((state8.params, state8.batch_stats)))
  leaves1 = jax.tree.leaves(jax.device_get((state1.params, state1.batch_stats)))
  for a, b in zip(leaves8, leaves1):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  # The batch really is split over the 8 devices, the state replicated.
  batch = fixed_batch(sharded)
  assert len(batch['image'].sharding.device_set) == 8
  assert batch['image'].addressable_shards[0].data.shape[0] == 2
  assert state8.params['fc']['kernel'].sharding.is_fully_replicated
  # Three steps, one compilation.
  assert compiles.count('/jax/core/compile/jaxpr_to_mlir_module_duration') == 1, compiles


def test_bn_group_size_equals_per_device_statistics():
  """bn_group_size=2 on 8 devices x 2 examples = BN statistics per device."""
  config = tiny_config()
  config.model_options.bn_group_size = 2
  grouped = make_trainer(config)
  plain = make_trainer(tiny_config())
  _, grouped_losses = run_steps(grouped, 1, fixed_batch(grouped))
  _, plain_losses = run_steps(plain, 1, fixed_batch(plain))
  assert np.isfinite(grouped_losses[0])
  assert abs(grouped_losses[0] - plain_losses[0]) > 1e-4  # Different statistics.


def test_warmup_rule_ends_on_training_error():
  # Threshold 1.0: the smoothed error is below it after one step, warm-up ends.
  trainer = make_trainer(tiny_config(warmup_lr=0.01, warmup_until_error=1.0))
  state = trainer.init_fn(zero_norm(trainer))
  assert bool(state.warmup_active)
  batch = fixed_batch(trainer)
  state, metrics = trainer.train_fn(state, batch)
  assert float(metrics['learning_rate']) == pytest.approx(0.01)  # Warm-up lr.
  assert not bool(state.warmup_active)
  state, metrics = trainer.train_fn(state, batch)
  assert float(metrics['learning_rate']) == pytest.approx(0.1)  # Back to base.
  # A threshold that is never reached keeps the warm-up until the safety cap.
  trainer = make_trainer(tiny_config(warmup_lr=0.01, warmup_until_error=1e-6,
                                     warmup_max_steps=3))
  state = trainer.init_fn(zero_norm(trainer))
  for expected in (True, True, False):
    state, metrics = trainer.train_fn(state, batch)
    assert float(metrics['learning_rate']) == pytest.approx(0.01)
    assert bool(state.warmup_active) == expected


def test_weight_decay_is_l2_before_momentum():
  """First step from zero momentum: update = -lr * (grad + wd * w)."""
  config = tiny_config()
  config.optimizer.weight_decay = 0.5  # Large, so the decay term dominates.
  trainer = make_trainer(config)
  params = trainer.init_fn(zero_norm(trainer)).params
  grads = jax.tree.map(jnp.zeros_like, params)
  opt = trainer.optimizer
  opt_state = opt.init(params)
  updates, _ = opt.update(grads, opt_state, params)
  np.testing.assert_allclose(updates['fc']['kernel'], -0.1 * 0.5 * params['fc']['kernel'],
                             rtol=1e-6)


def test_evaluate_counts_every_example_once():
  config = tiny_config()
  trainer = make_trainer(config)
  state = trainer.init_fn(zero_norm(trainer))
  split = tiny_data(37, 3)  # 37 examples, batches of 16 on 8 devices.
  dataset = data.create(config, preloaded=(tiny_data(64), {'test': split}))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  scorer = evaluation.Scorer(trainer.model, dataset, trainer.mesh)
  out = evaluation.evaluate_protocol('center', scorer, variables, state.norm, dataset,
                                     'test', config)
  assert out['count'] == 37
  images = (jnp.asarray(split.images, jnp.float32) - 127.5) / 64.0
  logits = np.asarray(trainer.model.apply(variables, images, train=False))
  expected = float(np.mean(np.argmax(logits, -1) != split.labels))
  assert out['top1_error'] == pytest.approx(expected, abs=1e-6)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  expected5 = float(np.mean(~(top5 == split.labels[:, None]).any(1)))
  assert out['top5_error'] == pytest.approx(expected5, abs=1e-6)


def saved_steps(workdir, config):
  manager = checkpointing.manager(str(workdir))
  steps = manager.all_steps()
  manager.close()
  return sorted(steps)


def _final_params(workdir, config):
  manager = checkpointing.manager(workdir)
  trainer = make_trainer(config)
  state, data_state = checkpointing.restore(manager, manager.latest_step(),
                                            trainer.sharded_abstract_state())
  manager.close()
  return jax.device_get(state), data_state


def test_interrupt_and_resume_equals_uninterrupted(tmp_path):
  data = tiny_splits()
  config = tiny_config()
  train.train_and_evaluate(config, str(tmp_path / 'straight'), data=data)
  interrupted = tiny_config()
  interrupted.stop_after_steps = 3
  train.train_and_evaluate(interrupted, str(tmp_path / 'resumed'), data=data)
  assert saved_steps(tmp_path / 'resumed', config) == [3]
  train.train_and_evaluate(config, str(tmp_path / 'resumed'), data=data)

  straight, straight_data = _final_params(str(tmp_path / 'straight'), config)
  resumed, resumed_data = _final_params(str(tmp_path / 'resumed'), config)
  assert int(straight.step) == int(resumed.step) == 6
  assert straight_data == resumed_data  # Same position in the data order.
  np.testing.assert_array_equal(jax.random.key_data(straight.rng),
                                jax.random.key_data(resumed.rng))
  for a, b in zip(jax.tree.leaves(straight.replace(rng=None)),
                  jax.tree.leaves(resumed.replace(rng=None))):
    np.testing.assert_array_equal(a, b)
  # Observability: the metrics file has train and test records.
  records = [json.loads(line) for line in open(tmp_path / 'straight' / 'metrics.jsonl')]
  assert any('train_loss' in r for r in records)
  assert any(r.get('step') == 6 and 'test_error' in r for r in records)
  assert os.listdir(tmp_path / 'straight' / 'tensorboard')
  assert json.load(open(tmp_path / 'straight' / 'config.json'))['model'] == 'cifar_resnet20'
  # Evaluate-only mode on the finished workdir.
  results = train.evaluate_workdir(config, str(tmp_path / 'straight'), data=data)
  assert results['step'] == 6 and results['count'] == 37 and results['split'] == 'test'
  last = [r for r in records if 'test_error' in r][-1]
  assert results['top1_error'] == pytest.approx(last['test_error'])
  saved = json.load(open(tmp_path / 'straight' / 'eval.json'))
  assert saved['step'] == 6
  assert saved['protocols']['center']['top1_error'] == pytest.approx(last['test_error'])


def _patch_compiled_step(monkeypatch, on_call):
  """Wraps the compiled train step so that `on_call(n, out)` sees each call."""
  original = train.Trainer.compile_train

  class Step:
    """Calls the compiled step, then `on_call`; otherwise behaves like it."""

    def __init__(self, compiled):
      self.compiled, self.calls = compiled, 0

    def __call__(self, *args):
      self.calls += 1
      return on_call(self.calls, self.compiled(*args))

    def memory_analysis(self):
      return self.compiled.memory_analysis()

  def compile_train(self, batch_size):
    return Step(original(self, batch_size))

  monkeypatch.setattr(train.Trainer, 'compile_train', compile_train)


def test_sigterm_saves_and_exits(tmp_path, monkeypatch):
  def on_call(n, out):
    if n == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  _patch_compiled_step(monkeypatch, on_call)
  config = tiny_config()
  train.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  assert saved_steps(tmp_path, config) == [2]  # Saved where it stopped, not at the end.
  assert signal.getsignal(signal.SIGTERM) is not None


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  def on_call(n, out):
    state, metrics = out
    if n >= 5:  # Steps 5 and 6 "diverge".
      metrics = dict(metrics, train_loss=metrics['train_loss'] * jnp.nan)
    return state, metrics

  _patch_compiled_step(monkeypatch, on_call)
  config = tiny_config()
  with pytest.raises(FloatingPointError, match='non-finite training loss'):
    train.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  assert saved_steps(tmp_path, config) == [3]  # The good one; nothing saved after.


def test_workdir_of_another_model_fails_before_compiling(tmp_path, monkeypatch):
  config = tiny_config()
  config.stop_after_steps = 1
  train.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  other = tiny_config()
  other.model = 'cifar_plain20'

  def no_compile(*args, **kwargs):
    raise AssertionError('compiled before checking the workdir')

  monkeypatch.setattr(train.Trainer, 'compile_train', no_compile)
  with pytest.raises(ValueError, match='fresh --workdir'):
    train.train_and_evaluate(other, str(tmp_path), data=tiny_splits())
  assert saved_steps(tmp_path, config) == [1]


def test_corrupt_checkpoint_error_says_what_to_do(tmp_path):
  config = tiny_config()
  config.stop_after_steps = 1
  train.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  state_dir = tmp_path / 'checkpoints' / '1' / 'state'
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name != '_METADATA':
        open(os.path.join(root, name), 'wb').close()  # Truncate every data file.
  with pytest.raises(ValueError, match='could not restore'):
    train.train_and_evaluate(tiny_config(), str(tmp_path), data=tiny_splits())
  assert (tmp_path / 'checkpoints' / '1').exists()  # Nothing deleted.


@pytest.mark.parametrize('mutate,message', [
    (lambda c: setattr(c, 'model', 'resnet19'), 'unknown model'),
    (lambda c: setattr(c.input, 'dataset', 'mnist'), 'unknown dataset'),
    (lambda c: setattr(c.input, 'batch_size', 12), 'multiple of the 8 devices'),
    (lambda c: setattr(c.schedule, 'boundaries', (3, 7)), 'past the end'),
])
def test_bad_config_fails_before_anything_runs(tmp_path, mutate, message):
  config = tiny_config()
  mutate(config)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()


def test_missing_data_dir_names_the_fix(tmp_path):
  config = tiny_config()
  config.input.dataset = 'cifar10_jpeg'
  config.input.data_dir = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='data_dir'):
    train.train_and_evaluate(config, str(tmp_path / 'workdir'))


def test_resume_with_another_data_order_is_refused(tmp_path):
  """A saved data position means other batches under another batch or seed."""
  config = tiny_config()
  config.stop_after_steps = 1
  train.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  for field, value in (('input.batch_size', 8), ('seed', 3)):
    other = tiny_config()
    group, _, key = field.rpartition('.')
    (other[group] if group else other)[key] = value
    with pytest.raises(ValueError, match='data order') as error:
      train.train_and_evaluate(other, str(tmp_path), data=tiny_splits())
    assert 'fresh --workdir' in str(error.value)
  assert saved_steps(tmp_path, config) == [1]  # Nothing lost.
  train.train_and_evaluate(tiny_config(), str(tmp_path), data=tiny_splits())  # Same: resumes.
  assert saved_steps(tmp_path, config)[-1] == 6
