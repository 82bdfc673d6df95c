"""Tests of the train step, the training loop, checkpoints and bad input."""

import functools
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import (
  data,
  distributed,
  evaluation,
  models,
)
from resnet_jax.training import loop
from resnet_jax.training import step as step_lib

from helpers import (
  final_params,
  fixed_batch,
  make_trainer,
  patch_compiled_step,
  run_steps,
  saved_steps,
  tiny_config,
  tiny_data,
  tiny_splits,
  zero_norm,
)


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


@pytest.mark.slow
def test_warmup_rule_ends_when_the_smoothed_error_crosses_the_threshold():
  smoothing, warmup_lr = 0.9, 0.01
  # A threshold never reached: warm-up all along; record the errors it sees.
  trainer = make_trainer(
    tiny_config(
      warmup_lr=warmup_lr,
      warmup_until_error=1e-6,
      warmup_max_steps=10**6,
      boundaries=(),
      total_steps=100,
    )
  )
  batch = fixed_batch(trainer)
  state = trainer.init_fn(zero_norm(trainer))
  ema, emas = float(state.train_error_ema), []
  for _ in range(8):
    state, metrics = trainer.train_fn(state, batch, {})
    assert float(metrics['learning_rate']) == pytest.approx(warmup_lr)
    ema = smoothing * ema + (1 - smoothing) * float(metrics['train_error'])
    emas.append(ema)
    assert float(state.train_error_ema) == pytest.approx(ema, abs=1e-6)
  # The first step whose EMA falls below all earlier ones (it must exist, or
  # the test would not test the rule): a threshold between them is crossed
  # at step k+1 and not before.
  k = next(i for i in range(1, len(emas)) if emas[i] < min(emas[:i]) - 1e-4)
  threshold = (min(emas[:k]) + emas[k]) / 2
  trainer = make_trainer(
    tiny_config(
      warmup_lr=warmup_lr,
      warmup_until_error=threshold,
      warmup_max_steps=10**6,
      boundaries=(),
      total_steps=100,
    )
  )
  state = trainer.init_fn(zero_norm(trainer))
  for step in range(1, k + 3):
    state, metrics = trainer.train_fn(state, batch, {})
    expected_lr = warmup_lr if step <= k + 1 else 0.1  # The step that crosses still warms up.
    assert float(metrics['learning_rate']) == pytest.approx(expected_lr), step
    assert bool(state.warmup_active) == (step < k + 1), step
  # A threshold that is never reached keeps the warm-up until the safety cap.
  trainer = make_trainer(
    tiny_config(warmup_lr=warmup_lr, warmup_until_error=1e-6, warmup_max_steps=3)
  )
  state = trainer.init_fn(zero_norm(trainer))
  for expected in (True, True, False):
    state, metrics = trainer.train_fn(state, batch, {})
    assert float(metrics['learning_rate']) == pytest.approx(warmup_lr)
    assert bool(state.warmup_active) == expected


def test_weight_decay_is_l2_before_momentum():
  """Two steps with zero loss gradient. L2 before momentum (the paper, Caffe):
  m1 = wd w0, m2 = mu m1 + wd w1, so the second update is -lr (mu wd w0 + wd w1).
  Decoupled decay would give -lr wd w1: one step alone cannot tell them apart."""
  config = tiny_config()
  config.optimizer.weight_decay = 0.5  # Large, so the decay term dominates.
  lr, mu, wd = 0.1, config.optimizer.momentum, 0.5
  trainer = make_trainer(config)
  params = trainer.init_fn(zero_norm(trainer)).params
  grads = jax.tree.map(jnp.zeros_like, params)
  opt = trainer.optimizer
  opt_state = opt.init(params)
  w0 = params['fc']['kernel']
  updates, opt_state = opt.update(grads, opt_state, params)
  np.testing.assert_allclose(updates['fc']['kernel'], -lr * wd * w0, rtol=1e-6)
  params = jax.tree.map(lambda p, u: p + u, params, updates)
  w1 = params['fc']['kernel']
  updates, _ = opt.update(grads, opt_state, params)
  np.testing.assert_allclose(updates['fc']['kernel'], -lr * (mu * wd * w0 + wd * w1), rtol=1e-5)
  assert not np.allclose(updates['fc']['kernel'], -lr * wd * w1, rtol=1e-3)


def test_evaluate_counts_every_example_once():
  config = tiny_config()
  trainer = make_trainer(config)
  state = trainer.init_fn(zero_norm(trainer))
  split = tiny_data(37, 3)  # 37 examples, batches of 16 on 8 devices.
  dataset = data.create(config, preloaded=(tiny_data(64), {'test': split}))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  scorer = evaluation.Scorer(trainer.model, dataset, trainer.mesh)
  out = evaluation.evaluate_protocol(
    'center', scorer, variables, state.norm, dataset, 'test', config
  )
  assert out['count'] == 37
  images = (jnp.asarray(split.images, jnp.float32) - 127.5) / 64.0
  logits = np.asarray(trainer.model.apply(variables, images, train=False))
  expected = float(np.mean(np.argmax(logits, -1) != split.labels))
  assert out['top1_error'] == pytest.approx(expected, abs=1e-6)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  expected5 = float(np.mean(~(top5 == split.labels[:, None]).any(1)))
  assert out['top5_error'] == pytest.approx(expected5, abs=1e-6)


@pytest.mark.parametrize('warmup', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, warmup):
  data = tiny_splits()
  # With warm-up: still active at the interruption (step 3), ended by the cap
  # at step 5: the resumed run must carry its state over.
  schedule = dict(warmup_lr=0.01, warmup_until_error=1e-6, warmup_max_steps=5) if warmup else {}
  config = tiny_config(**schedule)
  loop.train_and_evaluate(config, str(tmp_path / 'straight'), data=data)
  interrupted = tiny_config(**schedule)
  interrupted.stop_after_steps = 3
  loop.train_and_evaluate(interrupted, str(tmp_path / 'resumed'), data=data)
  assert saved_steps(tmp_path / 'resumed', config) == [3]
  middle, _ = final_params(str(tmp_path / 'resumed'), config)
  assert bool(middle.warmup_active) == warmup
  loop.train_and_evaluate(config, str(tmp_path / 'resumed'), data=data)

  straight, straight_data = final_params(str(tmp_path / 'straight'), config)
  resumed, resumed_data = final_params(str(tmp_path / 'resumed'), config)
  assert int(straight.step) == int(resumed.step) == 6
  assert straight_data == resumed_data  # Same position in the data order.
  np.testing.assert_array_equal(jax.random.key_data(straight.rng), jax.random.key_data(resumed.rng))
  for a, b in zip(
    jax.tree.leaves(straight.replace(rng=None)), jax.tree.leaves(resumed.replace(rng=None))
  ):
    np.testing.assert_array_equal(a, b)
  assert not bool(resumed.warmup_active)
  if warmup:
    return
  # Observability: the metrics file has train and test records.
  records = [json.loads(line) for line in open(tmp_path / 'straight' / 'metrics.jsonl')]
  assert any('train_loss' in r for r in records)
  assert any(r.get('step') == 6 and 'test_error' in r for r in records)
  assert os.listdir(tmp_path / 'straight' / 'tensorboard')
  assert json.load(open(tmp_path / 'straight' / 'config.json'))['model'] == 'cifar_resnet20'
  # Evaluate-only mode on the finished workdir.
  results = evaluation.evaluate_workdir(config, str(tmp_path / 'straight'), data=data)
  assert results['step'] == 6 and results['count'] == 37 and results['split'] == 'test'
  last = [r for r in records if 'test_error' in r][-1]
  assert results['top1_error'] == pytest.approx(last['test_error'])
  saved = json.load(open(tmp_path / 'straight' / 'eval.json'))
  assert saved['step'] == 6
  assert saved['protocols']['center']['top1_error'] == pytest.approx(last['test_error'])


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_within_two_steps(tmp_path, monkeypatch, signum):
  """The host never runs more than one step ahead of the device, so the
  checkpoint taken on SIGTERM (or Ctrl-C) is at most a step or two after it."""
  outputs = []

  def on_call(n, out):
    # When step n is dispatched, step n-2 must be finished (not just queued).
    if n >= 3:
      assert outputs[n - 3][1]['train_loss'].is_ready(), f'step {n - 2} still queued'
    outputs.append(out)
    if n == 5:
      os.kill(os.getpid(), signum)
    return out

  patch_compiled_step(monkeypatch, on_call)
  config = tiny_config(total_steps=50, boundaries=())
  config.checkpoint_every_steps = 100
  previous = signal.getsignal(signum)
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  # Saved where it stopped, not at the end (and before the evaluation at step 3).
  assert saved_steps(tmp_path, config) == [3, 5]
  assert len(outputs) == 5  # Nothing dispatched after the signal's step.
  assert signal.getsignal(signum) is previous  # The handler is put back.
  # config.json holds the config that trained.
  assert json.load(open(tmp_path / 'config.json'))['schedule']['total_steps'] == 50


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  def on_call(n, out):
    state, metrics = out
    if n >= 5:  # Steps 5 and 6 "diverge".
      metrics = dict(metrics, train_loss=metrics['train_loss'] * jnp.nan)
    return state, metrics

  patch_compiled_step(monkeypatch, on_call)
  config = tiny_config()
  # Step 5 is neither a log nor a checkpoint step: it is still caught there.
  with pytest.raises(
    FloatingPointError,
    match=r'non-finite train_loss=nan at step 5;.*'
    r'last checkpoint \(step 3\) was kept',
  ):
    loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  assert saved_steps(tmp_path, config) == [3]  # The good one; nothing saved after.


def test_diverged_fresh_run_saves_nothing_but_its_config(tmp_path, monkeypatch):
  """config.json is written before the first step; no checkpoint of a bad step."""

  def on_call(n, out):
    state, metrics = out
    return state, dict(metrics, train_loss=metrics['train_loss'] * jnp.nan)

  patch_compiled_step(monkeypatch, on_call)
  with pytest.raises(FloatingPointError, match='at step 1;.*no checkpoint was saved'):
    loop.train_and_evaluate(tiny_config(), str(tmp_path), data=tiny_splits())
  assert json.loads((tmp_path / 'config.json').read_text())['model'] == 'cifar_resnet20'
  assert not list((tmp_path / 'checkpoints').iterdir())


def test_workdir_of_another_model_fails_before_compiling(tmp_path, monkeypatch):
  config = tiny_config()
  config.stop_after_steps = 1
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  other = tiny_config()
  other.model = 'cifar_plain20'

  def no_compile(*args, **kwargs):
    raise AssertionError('compiled before checking the workdir')

  monkeypatch.setattr(step_lib.Trainer, 'compile_train', no_compile)
  with pytest.raises(ValueError, match='fresh --workdir'):
    loop.train_and_evaluate(other, str(tmp_path), data=tiny_splits())
  assert saved_steps(tmp_path, config) == [1]


def _truncate_data_files(step_dir):
  for root, _, files in os.walk(step_dir):
    for name in files:
      if name != '_METADATA':
        open(os.path.join(root, name), 'wb').close()


@pytest.mark.parametrize(
  'damage', ['truncated_state', pytest.param('corrupt_meta', marks=pytest.mark.slow)]
)
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, damage, capfd):
  data = tiny_splits()
  config = tiny_config()
  config.stop_after_steps = 6
  loop.train_and_evaluate(config, str(tmp_path / 'straight'), data=data)
  config.stop_after_steps = 4  # Saves 3 and 4.
  workdir = tmp_path / 'damaged'
  loop.train_and_evaluate(config, str(workdir), data=data)
  assert saved_steps(workdir, config) == [3, 4]
  if damage == 'truncated_state':
    _truncate_data_files(workdir / 'checkpoints' / '4' / 'state')
  else:
    (workdir / 'checkpoints' / '4' / 'meta' / 'metadata').write_text('{"struct')
  capfd.readouterr()
  loop.train_and_evaluate(tiny_config(), str(workdir), data=data)
  err = capfd.readouterr().err
  assert 'warning: checkpoint 4 in' in err and 'cannot be read' in err
  assert len([line for line in err.splitlines() if 'checkpoint 4' in line]) <= 2, err
  # Resumed from 3 and finished; the damaged step was moved aside, not deleted.
  assert (workdir / 'checkpoints' / '4.unreadable').is_dir()
  assert saved_steps(workdir, config)[-1] == 6
  straight, _ = final_params(str(tmp_path / 'straight'), config)
  resumed, _ = final_params(str(workdir), config)
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)


def test_no_readable_checkpoint_fails_in_one_line_and_deletes_nothing(tmp_path):
  config = tiny_config()
  config.stop_after_steps = 1
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  _truncate_data_files(tmp_path / 'checkpoints' / '1' / 'state')
  with pytest.raises(ValueError, match='no checkpoint .* can be read') as error:
    loop.train_and_evaluate(tiny_config(), str(tmp_path), data=tiny_splits())
  assert '\n' not in str(error.value)
  assert (tmp_path / 'checkpoints' / '1').exists()  # Nothing deleted or moved.


def test_finished_run_says_so_without_training(tmp_path, monkeypatch, capsys):
  config = tiny_config(total_steps=3, boundaries=())
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())

  def no_compile(*args, **kwargs):
    raise AssertionError('compiled a finished run')

  monkeypatch.setattr(step_lib.Trainer, 'compile_train', no_compile)
  capsys.readouterr()
  assert loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits()) == {}
  assert 'training is finished' in capsys.readouterr().out


def test_config_history_keeps_each_config_that_trained(tmp_path):
  config = tiny_config()
  config.stop_after_steps = 3
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  changed = tiny_config()
  changed.eval_every_steps = 2  # Changed on resume.
  loop.train_and_evaluate(changed, str(tmp_path), data=tiny_splits())
  assert json.load(open(tmp_path / 'config.json'))['eval_every_steps'] == 2
  history = [json.loads(line) for line in open(tmp_path / 'config_history.jsonl')]
  assert [h['from_step'] for h in history] == [0, 3]
  assert [h['config']['eval_every_steps'] for h in history] == [3, 2]


def test_unwritable_workdir_fails_in_one_line(tmp_path):
  (tmp_path / 'file').write_text('')  # A workdir under a file: even root cannot write.
  with pytest.raises(OSError, match='cannot write into --workdir') as error:
    loop.train_and_evaluate(tiny_config(), str(tmp_path / 'file' / 'run'), data=tiny_splits())
  assert '\n' not in str(error.value)


@pytest.mark.parametrize(
  'mutate,message',
  [
    (lambda c: setattr(c, 'model', 'resnet19'), 'unknown model'),
    (lambda c: setattr(c.input, 'dataset', 'cifar11'), 'unknown dataset'),
    (lambda c: setattr(c.input, 'batch_size', 12), 'multiple of the 8 devices'),
    (lambda c: setattr(c.schedule, 'boundaries', (3, 7)), 'past the end'),
  ],
)
def test_bad_config_fails_before_anything_runs(tmp_path, mutate, message):
  config = tiny_config()
  mutate(config)
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()


def test_missing_data_dir_names_the_fix(tmp_path):
  config = tiny_config()
  config.input.dataset = 'cifar10_jpeg'
  config.input.data_dir = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='data_dir'):
    loop.train_and_evaluate(config, str(tmp_path / 'workdir'))


def test_resume_with_another_data_order_is_refused(tmp_path):
  """A saved data position means other batches under another batch or seed."""
  config = tiny_config()
  config.stop_after_steps = 1
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  for field, value in (('input.batch_size', 8), ('seed', 3)):
    other = tiny_config()
    group, _, key = field.rpartition('.')
    (other[group] if group else other)[key] = value
    with pytest.raises(ValueError, match='data order') as error:
      loop.train_and_evaluate(other, str(tmp_path), data=tiny_splits())
    assert 'fresh --workdir' in str(error.value)
  assert saved_steps(tmp_path, config) == [1]  # Nothing lost.
  loop.train_and_evaluate(tiny_config(), str(tmp_path), data=tiny_splits())  # Same: resumes.
  assert saved_steps(tmp_path, config)[-1] == 6


@pytest.mark.parametrize(
  'per_dispatch, every, logged',
  [
    (1, 100, [1, 10, 100, 200]),
    (4, 100, [4, 12, 100, 200]),  # The first dispatches reaching steps 1 and 10.
    (1, 5, [1, 5, 10, 15]),
    (10, 10, [10, 20]),
  ],
)
def test_progress_starts_at_the_first_steps(per_dispatch, every, logged):
  steps = range(per_dispatch, 201, per_dispatch)
  early = [s for s in steps if loop._is_early_progress_step(s, per_dispatch, every)]
  got = sorted(early + [s for s in steps if s % every == 0])
  assert got[: len(logged)] == logged


def test_early_progress_lines_are_printed_not_logged(tmp_path, capsys):
  config = tiny_config(total_steps=12, boundaries=(6, 9))
  config.log_every_steps = 12
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  lines = capsys.readouterr().out.splitlines()
  speed_lines = [line.split('/')[0] for line in lines if 'img/s' in line and 'ETA' in line]
  assert speed_lines == ['step 1', 'step 10', 'step 12']
  # The start-up says how the step was compiled (on CPU, stages unrolled).
  assert any(line.startswith('Compiled train step (stages one block at a time') for line in lines)
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train_loss' in r] == [12]


def test_cpu_trains_shallow_scanned_stages_one_block_at_a_time():
  # The rule: on CPU, stages of up to PER_BLOCK_MAX_BLOCKS later blocks; deeper
  # ones and unscanned models keep their own program.
  mesh = distributed.make_mesh(jax.devices()[:1])
  per_block = lambda name, **o: step_lib.trains_per_block(models.create_model(name, **o), mesh)
  assert per_block('cifar_resnet20') and per_block('cifar_resnet56') and per_block('resnet50')
  assert not per_block('cifar_resnet110') and not per_block('cifar_resnet1202')
  assert not per_block('cifar_resnet20', scan_blocks=False)
  assert make_trainer(tiny_config()).per_block_stages


def test_one_block_at_a_time_trains_as_the_scanned_stages():
  # The same step, state and batch, scanned stages computed by the scan or one
  # block at a time: the same loss, parameters and BatchNorm statistics.
  trainer = make_trainer(tiny_config(), jax.devices()[:1])
  state, batch = trainer.init_fn(zero_norm(trainer)), fixed_batch(trainer)
  kwargs = dict(
    model=trainer.model, optimizer=trainer.optimizer, config=trainer.config, dataset=trainer.dataset
  )
  outs = [
    jax.jit(functools.partial(step_lib.train_step, per_block_stages=flag, **kwargs))(state, batch)
    for flag in (False, True)
  ]
  (scanned, m_scanned), (per_block, m_per_block) = outs
  np.testing.assert_allclose(m_scanned['train_loss'], m_per_block['train_loss'], rtol=1e-6)
  assert jax.tree.structure(scanned.params) == jax.tree.structure(per_block.params)
  pairs = zip(
    jax.tree.leaves((scanned.params, scanned.batch_stats)),
    jax.tree.leaves((per_block.params, per_block.batch_stats)),
  )
  for a, b in pairs:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
