"""Tests of the modern and large-batch recipe fields: the optimizer kinds, the
cosine and polynomial schedules with linear warm-up, label smoothing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import config_lib, config_validation, errors, evaluation
from resnet_jax.training import loop, optimizers, schedules
from resnet_jax.training import step as step_lib

from helpers import fixed_batch, make_trainer, run_steps, saved_steps, tiny_config, tiny_splits

LR = 0.5


def _params():
  return {
    'fc': {'kernel': jnp.array([[3.0], [4.0]]), 'bias': jnp.array([2.0])},
    'stem': {'kernel': jnp.array([[1.0], [0.0]])},
  }


def _grads():
  return {
    'fc': {'kernel': jnp.array([[0.6], [0.8]]), 'bias': jnp.array([1.0])},
    'stem': {'kernel': jnp.array([[0.5], [0.0]])},
  }


def _first_update(config, params=None, grads=None):
  params = _params() if params is None else params
  optimizer = optimizers.create_optimizer(config, params)
  opt_state = optimizer.init(params)
  opt_state.hyperparams['learning_rate'] = jnp.asarray(LR)
  updates, _ = optimizer.update(_grads() if grads is None else grads, opt_state, params)
  return jax.tree.map(np.asarray, updates)


def _config(kind, weight_decay=0.1, exclude_bn_and_bias=True, **fields):
  config = config_lib.cifar10()
  config.optimizer.kind = kind
  config.optimizer.weight_decay = weight_decay
  config.optimizer.exclude_bn_and_bias = exclude_bn_and_bias
  config.optimizer.update(fields)
  return config


def test_unknown_optimizer_kind_is_one_line_naming_the_field_and_choices():
  config = config_lib.cifar10()
  config.optimizer.kind = 'adam'
  with pytest.raises(errors.ConfigError) as e:
    config_validation.validate(config, num_devices=1)
  message = str(e.value)
  assert '\n' not in message and 'optimizer.kind' in message
  assert all(kind in message for kind in config_validation.OPTIMIZERS)


@pytest.mark.parametrize('kind', config_validation.OPTIMIZERS)
def test_every_optimizer_kind_validates(kind):
  config_validation.validate(_config(kind), num_devices=1)


def test_sgd_adds_the_l2_term_before_momentum():
  updates = _first_update(_config('sgd'))
  # The first step: momentum holds the decayed gradient alone; the bias gets no decay.
  np.testing.assert_allclose(updates['fc']['kernel'], -LR * np.array([[0.9], [1.2]]), rtol=1e-6)
  np.testing.assert_allclose(updates['fc']['bias'], [-LR], rtol=1e-6)


def test_nesterov_looks_ahead_along_the_momentum():
  updates = _first_update(_config('nesterov'))
  # Nesterov's first step: g + momentum * g, with g the decayed gradient.
  np.testing.assert_allclose(
    updates['fc']['kernel'], -LR * 1.9 * np.array([[0.9], [1.2]]), rtol=1e-6
  )


def test_lars_trust_ratio_matches_a_hand_computed_update():
  updates = _first_update(_config('lars', lars_trust_coefficient=0.01))
  # fc/kernel: w = (3, 4), |w| = 5; decayed g = (0.6, 0.8) + 0.1 w = (0.9, 1.2), |g| = 1.5.
  ratio = 0.01 * 5.0 / 1.5
  np.testing.assert_allclose(
    updates['fc']['kernel'], -LR * ratio * np.array([[0.9], [1.2]]), rtol=1e-5
  )
  # stem/kernel: w = (1, 0), decayed g = (0.6, 0), ratio = 0.01 * 1 / 0.6.
  np.testing.assert_allclose(
    updates['stem']['kernel'], -LR * (0.01 / 0.6) * np.array([[0.6], [0.0]]), rtol=1e-5
  )
  # The bias is spared decay and trust ratio alike: a plain SGD step.
  np.testing.assert_allclose(updates['fc']['bias'], [-LR], rtol=1e-6)


def test_lars_without_the_exclusion_scales_the_bias_too():
  updates = _first_update(_config('lars', exclude_bn_and_bias=False, lars_trust_coefficient=0.01))
  # bias: w = 2, decayed g = 1 + 0.1 * 2 = 1.2, ratio = 0.01 * 2 / 1.2.
  np.testing.assert_allclose(updates['fc']['bias'], [-LR * (0.02 / 1.2) * 1.2], rtol=1e-5)


def test_adamw_decays_decoupled_and_masked():
  updates = _first_update(_config('adamw'))
  # Adam's first step is g / (|g| + eps) elementwise, then the decay wd * w.
  np.testing.assert_allclose(
    updates['fc']['kernel'], -LR * (1.0 + 0.1 * np.array([[3.0], [4.0]])), rtol=1e-5
  )
  np.testing.assert_allclose(updates['fc']['bias'], [-LR], rtol=1e-5)


@pytest.mark.parametrize('kind', config_validation.OPTIMIZERS)
def test_frozen_parameters_get_no_update_with_every_kind(kind):
  config = _config(kind)
  config.freeze = '^stem/'
  updates = _first_update(config)
  np.testing.assert_array_equal(updates['stem']['kernel'], 0.0)
  assert np.all(updates['fc']['kernel'] != 0.0)


def _schedule(kind, **fields):
  config = config_lib.cifar10()
  config.schedule.kind = kind
  config.schedule.total_steps = 1000
  config.schedule.boundaries = (600, 800)
  config.schedule.update(fields)
  config_validation.validate(config, num_devices=1)
  schedule = schedules.learning_rate_schedule(config)
  return lambda step: float(schedule(jnp.asarray(step, jnp.int32)))


def _cosine(step, warmup=100, total=1000, base=0.1, alpha=0.0):
  t = (step - warmup) / (total - warmup)
  return base * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha)


@pytest.mark.parametrize('step', [0, 50, 100, 550, 1000])
def test_cosine_after_linear_warmup_is_its_closed_form(step):
  lr = _schedule('cosine', warmup_steps=100, end_lr_fraction=0.01)
  expected = 0.1 * step / 100 if step < 100 else _cosine(step, alpha=0.01)
  np.testing.assert_allclose(lr(step), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize('step', [0, 50, 100, 550, 1000])
def test_polynomial_after_linear_warmup_is_its_closed_form(step):
  lr = _schedule('polynomial', warmup_steps=100, polynomial_power=2.0)
  expected = 0.1 * step / 100 if step < 100 else 0.1 * (1 - (step - 100) / 900) ** 2
  np.testing.assert_allclose(lr(step), expected, rtol=1e-5, atol=1e-8)


def test_cosine_without_warmup_starts_at_the_base_lr():
  lr = _schedule('cosine')
  assert lr(0) == pytest.approx(0.1) and lr(500) == pytest.approx(0.05)
  assert lr(1000) == pytest.approx(0.0, abs=1e-8)


def test_piecewise_boundaries_count_from_the_start_through_a_warmup():
  lr = _schedule('piecewise', warmup_steps=100)
  expected = {0: 0.0, 50: 0.05, 100: 0.1, 599: 0.1, 600: 0.01, 800: 0.001}
  for step, value in expected.items():
    assert lr(step) == pytest.approx(value, rel=1e-5, abs=1e-9), step


def test_linear_warmup_and_the_papers_warmup_are_not_combined():
  config = config_lib.with_warmup(config_lib.cifar10())
  config.schedule.warmup_steps = 100
  with pytest.raises(errors.ConfigError, match='warmup_steps'):
    config_validation.validate(config, num_devices=1)


def test_label_smoothing_loss_is_its_closed_form():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  labels = jnp.array([0, 1])
  eps, k = 0.1, 3
  log_p = jax.nn.log_softmax(logits)
  expected = [
    -((1 - eps + eps / k) * log_p[i, y] + eps / k * (log_p[i].sum() - log_p[i, y]))
    for i, y in enumerate(labels)
  ]
  np.testing.assert_allclose(step_lib.cross_entropy(logits, labels, eps), expected, rtol=1e-6)
  plain = step_lib.cross_entropy(logits, labels)
  np.testing.assert_allclose(plain, [-log_p[0, 0], -log_p[1, 1]], rtol=1e-6)
  # Evaluation never sees the config's smoothing: its loss is the plain NLL.
  probs = np.asarray(jax.nn.softmax(logits))
  loss = evaluation.metrics(probs, np.asarray(labels))['loss']
  assert loss == pytest.approx(float(plain.mean()), rel=1e-5)


def test_label_smoothing_out_of_range_fails():
  config = config_lib.cifar10()
  config.label_smoothing = 1.0
  with pytest.raises(errors.ConfigError, match='label_smoothing'):
    config_validation.validate(config, num_devices=1)


def test_a_modern_recipe_trains_with_its_schedule():
  config = tiny_config(kind='cosine', warmup_steps=2, total_steps=6, boundaries=())
  config.optimizer.kind = 'lars'
  config.optimizer.exclude_bn_and_bias = True
  config.label_smoothing = 0.1
  config_validation.validate(config, num_devices=8)
  trainer = make_trainer(config)
  state, losses = run_steps(trainer, 3, fixed_batch(trainer))
  assert all(np.isfinite(losses)) and int(state.step) == 3
  _, metrics = trainer.train_fn(state, fixed_batch(trainer), {})
  expected = float(schedules.learning_rate_schedule(config)(3))
  assert float(metrics['learning_rate']) == pytest.approx(expected, rel=1e-5)


def test_resuming_under_another_optimizer_is_refused_before_compiling(tmp_path):
  config = tiny_config()
  config.stop_after_steps = 3
  loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  config.optimizer.kind = 'adamw'
  with pytest.raises(errors.ConfigError, match="'optimizer': 'adamw'"):
    loop.train_and_evaluate(config, str(tmp_path), data=tiny_splits())
  assert saved_steps(tmp_path, config) == [3]  # Nothing set aside.


def test_warmup_starts_from_warmup_init_lr():
  # Goyal et al. 2017: from 0.1 up to 0.1 x batch / 256 over the warm-up.
  lr = _schedule('cosine', warmup_steps=100, warmup_init_lr=0.02)
  assert lr(0) == pytest.approx(0.02) and lr(50) == pytest.approx(0.06)
  assert lr(100) == pytest.approx(0.1)


def test_steps_for_epochs_rounds_to_whole_steps():
  assert config_lib.steps_for_epochs(5, 1_281_167, 8192) == 782
  assert config_lib.steps_for_epochs(0, 50_000, 128) == 0
