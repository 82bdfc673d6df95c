"""The weights' moving average (EMA): its recursion, its checkpoint, its
evaluation beside the raw weights."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from resnet_jax import (
  config_validation,
  errors,
  evaluation,
  prediction,
  trained_workdir,
  workdir_files,
)
from resnet_jax.training import loop, weight_average

from helpers import fixed_batch, make_trainer, saved_steps, tiny_config, tiny_splits, zero_norm


def _ema(decay=0.5, every_steps=2, warmup_steps=1):
  return ml_collections.ConfigDict(
    {'decay': decay, 'every_steps': every_steps, 'warmup_steps': warmup_steps}
  )


def test_decay_schedule_copies_in_warmup_then_averages_every_k_steps():
  ema = _ema(decay=0.9, every_steps=2, warmup_steps=2)
  decays = [float(weight_average.decay_at(step, ema)) for step in range(1, 7)]
  # Steps 1, 2: warm-up copies; 3, 5: kept; 4, 6: averaged.
  assert decays == pytest.approx([0.0, 0.0, 1.0, 0.9, 1.0, 0.9])


def test_the_train_steps_average_equals_its_recursion():
  config = tiny_config()
  config.ema.update(_ema(decay=0.5, every_steps=2, warmup_steps=1))
  trainer = make_trainer(config)
  batch = fixed_batch(trainer)
  state = trainer.init_fn(zero_norm(trainer))
  expected = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  for step in range(1, 6):
    state, _ = trainer.train_fn(state, batch, {})
    weights = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
    decay = 0.0 if step <= 1 else (0.5 if step % 2 == 0 else 1.0)
    expected = jax.tree.map(lambda w, a, d=decay: d * a + (1 - d) * w, weights, expected)
    got = jax.device_get(state.ema)
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7), got, expected)
  # The average lags the raw weights.
  assert not np.allclose(got['params']['fc']['kernel'], weights['params']['fc']['kernel'])


def test_without_ema_the_state_holds_no_average():
  trainer = make_trainer(tiny_config())
  assert trainer.abstract_state.ema is None


def test_a_run_with_ema_evaluates_both_and_resumes_bit_exactly(tmp_path):
  config = tiny_config()
  config.ema.update(_ema(decay=0.6, every_steps=1, warmup_steps=2))
  config_validation.validate(config, num_devices=8)
  whole = loop.train_and_evaluate(config, str(tmp_path / 'whole'), data=tiny_splits())
  assert {'test_error', 'ema_test_error', 'ema_test_loss'} <= set(whole)
  results = json.loads((tmp_path / 'whole' / 'eval.json').read_text())
  assert set(results['protocols']) == {'center', 'center_ema'}
  assert results['protocols']['center_ema']['weights'] == 'ema'
  assert results['protocols']['center_ema']['top1_error'] == whole['ema_test_error']

  config.stop_after_steps = 3
  loop.train_and_evaluate(config, str(tmp_path / 'resumed'), data=tiny_splits())
  config.stop_after_steps = None
  resumed = loop.train_and_evaluate(config, str(tmp_path / 'resumed'), data=tiny_splits())
  assert resumed == whole

  # --mode=evaluate on the average gives the number training wrote.
  saved = workdir_files.read_config(str(tmp_path / 'whole'))
  saved.eval.ema = True
  out = evaluation.evaluate_workdir(saved, str(tmp_path / 'whole'), data=tiny_splits())
  assert out['top1_error'] == pytest.approx(whole['ema_test_error'])
  loaded = trained_workdir.load_workdir(str(tmp_path / 'whole'), ema=True)
  raw = trained_workdir.load_workdir(str(tmp_path / 'whole'))
  assert not np.allclose(
    loaded.variables['params']['fc']['kernel'], raw.variables['params']['fc']['kernel']
  )
  # Prediction with the average: the model applied to the average's variables.
  images = tiny_splits()[1]['test'].images[:4]
  logits = prediction.Predictor.from_workdir(str(tmp_path / 'whole'), ema=True).predict(images)
  x = (images - loaded.norm['mean']) / loaded.norm['std']
  expected = loaded.model.apply(loaded.variables, x, train=False)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_ema_of_a_run_trained_without_it_is_one_line(tmp_path):
  config = tiny_config()
  config.stop_after_steps = 3
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  with pytest.raises(errors.ConfigError, match='without a moving average') as e:
    trained_workdir.load_workdir(str(tmp_path), ema=True)
  assert '\n' not in str(e.value)
  config.ema.decay = 0.9  # Resuming with an average the checkpoint lacks.
  with pytest.raises(errors.ConfigError, match="'ema': True"):
    loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  assert saved_steps(tmp_path, config) == [3]


@pytest.mark.parametrize(
  'field, value', [('decay', 1.0), ('decay', -0.1), ('every_steps', 0), ('warmup_steps', -1)]
)
def test_bad_ema_fields_fail_with_one_line(field, value):
  config = tiny_config()
  config.ema[field] = value
  with pytest.raises(errors.ConfigError, match=f'ema.{field}'):
    config_validation.validate(config, num_devices=1)
