"""Gradient accumulation: k micro-batches, one update, as one batch k times larger."""

import jax
import numpy as np
import pytest

from resnet_jax import config_validation, errors
from resnet_jax.training import step as step_lib

from helpers import fixed_batch, make_trainer, run_steps, tiny_config


def _trained(accumulation, devices=None, freeze_batch_stats=True, steps=2):
  config = tiny_config()
  config.gradient_accumulation_steps = accumulation
  # BN as in evaluation: a micro-batch's statistics would otherwise differ
  # from the whole batch's (the one way in which accumulation is not exact).
  config.freeze_batch_stats = freeze_batch_stats
  trainer = make_trainer(config, devices)
  state, losses = run_steps(trainer, steps, fixed_batch(trainer))
  return jax.device_get(state), losses


def _assert_close(a, b, rtol=2e-5, atol=2e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize('accumulation, num_devices', [(2, 8), (4, 2)])
def test_k_micro_batches_update_as_one_batch_k_times_larger(accumulation, num_devices):
  devices = jax.devices()[:num_devices]  # Batch 16: k micro-batches on every device.
  whole, whole_losses = _trained(1, devices)
  micro, micro_losses = _trained(accumulation, devices)
  np.testing.assert_allclose(micro_losses, whole_losses, rtol=1e-5)
  _assert_close(micro.params, whole.params)
  _assert_close(micro.opt_state, whole.opt_state)


def test_micro_batches_are_spread_over_the_devices():
  # The same update on 8 devices as on one: each micro-batch takes every
  # device's share of it.
  one, _ = _trained(2, devices=jax.devices()[:1], freeze_batch_stats=False)
  eight, _ = _trained(2, freeze_batch_stats=False)
  _assert_close(eight.params, one.params)
  _assert_close(eight.batch_stats, one.batch_stats)


def test_micro_batches_hold_strided_examples():
  x = np.arange(12)
  micro = np.asarray(step_lib._micro_batches(x, 3))
  np.testing.assert_array_equal(micro, [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])


def test_bn_statistics_follow_each_micro_batch():
  # Running statistics move once per micro-batch: they differ from one batch's.
  whole, _ = _trained(1, freeze_batch_stats=False, steps=1)
  micro, _ = _trained(2, freeze_batch_stats=False, steps=1)
  assert not np.allclose(
    jax.tree.leaves(micro.batch_stats)[0], jax.tree.leaves(whole.batch_stats)[0]
  )


@pytest.mark.parametrize('accumulation', [0, 3, -1])
def test_an_accumulation_that_does_not_split_the_batch_is_one_line(accumulation):
  config = tiny_config()  # Batch 16 on 8 devices: 3 and 16 / 8 / 3 do not divide.
  config.gradient_accumulation_steps = accumulation
  with pytest.raises(errors.ConfigError, match='gradient_accumulation_steps') as e:
    config_validation.validate(config, num_devices=8)
  assert '\n' not in str(e.value)


def test_micro_batches_and_mixing_move_no_whole_batch_between_devices():
  # Strided micro-batches stay on their devices; mixing's roll by one image
  # sends one image per device (a collective-permute), never the batch.
  config = tiny_config()
  config.gradient_accumulation_steps = 2
  config.mixing.mixup_alpha = 0.2
  config.mixing.cutmix_alpha = 1.0
  hlo = make_trainer(config).compile_train(config.input.batch_size).as_text()
  assert 'all-gather' not in hlo and 'all-to-all' not in hlo
  assert 'collective-permute' in hlo
