"""The recipes beyond the paper's: Goyal et al.'s batch 8k, MLPerf's LARS at
32k, torchvision's new recipe. Each validates on the devices it assumes and
encodes its source's numbers (the configs' docstrings cite them)."""

import os

import jax.numpy as jnp
import pytest

from resnet_jax import cli, config_lib, config_validation, experiment
from resnet_jax.training import schedules

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'configs')
STEPS_PER_EPOCH_8K = 1_281_167 / 8192


def _load(name):
  return cli.load_config(os.path.join(CONFIG_DIR, f'imagenet_r50_{name}.py'))


def _lr(config):
  schedule = schedules.learning_rate_schedule(config)
  return lambda step: float(schedule(jnp.asarray(step, jnp.int32)))


@pytest.mark.parametrize(
  'name, device_counts', [('goyal', (32, 256)), ('lars', (256, 512)), ('tv2', (8, 64))]
)
def test_recipe_validates_on_the_devices_it_assumes(name, device_counts):
  config = _load(name)
  for devices in device_counts:
    config_validation.validate(config, num_devices=devices, num_processes=devices // 8)
  model = experiment.model_from_config(config)
  assert model.downsample_on_3x3 and model.shortcut == 'B' and model.num_classes == 1000


def test_goyal_follows_the_linear_rule_with_gradual_warmup():
  config = _load('goyal')
  lr = _lr(config)
  assert config_lib.scaled_lr(config) == pytest.approx(3.2)
  warmup = config.schedule.warmup_steps
  assert warmup == round(5 * STEPS_PER_EPOCH_8K)
  assert lr(0) == pytest.approx(0.1, rel=1e-5) and lr(warmup) == pytest.approx(3.2, rel=1e-5)
  assert lr(warmup // 2) == pytest.approx((0.1 + 3.2) / 2, rel=1e-2)
  for epoch, value in ((29.9, 3.2), (30.1, 0.32), (60.1, 0.032), (80.1, 0.0032)):
    assert lr(int(epoch * STEPS_PER_EPOCH_8K)) == pytest.approx(value, rel=1e-5), epoch
  assert config.schedule.total_steps == round(90 * STEPS_PER_EPOCH_8K)
  assert config.model_options.bn_group_size == 32 and config.model_options.zero_init_last_bn
  assert config.optimizer.exclude_bn_and_bias and config.optimizer.kind == 'sgd'


def test_lars_polynomial_schedule_is_mlperfs():
  config = _load('lars')
  lr = _lr(config)
  steps_per_epoch = 1_281_167 / 32_768
  warmup, total = config.schedule.warmup_steps, config.schedule.total_steps
  assert (warmup, total) == (round(18 * steps_per_epoch), round(64 * steps_per_epoch))
  assert lr(warmup // 2) == pytest.approx(29.0 * (warmup // 2) / warmup, rel=1e-5)
  assert lr(warmup) == pytest.approx(29.0, rel=1e-5)
  midway = warmup + (total - warmup) // 2
  t = (midway - warmup) / (total - warmup)
  assert lr(midway) == pytest.approx(1e-4 + (29.0 - 1e-4) * (1 - t) ** 2, rel=1e-4)
  assert lr(total) == pytest.approx(1e-4, rel=1e-3)
  assert config.optimizer.kind == 'lars' and config.optimizer.momentum == 0.929
  assert config.label_smoothing == 0.1


def test_tv2_has_torchvisions_options():
  config = _load('tv2')
  lr = _lr(config)
  assert lr(0) == pytest.approx(0.005, rel=1e-5)
  assert lr(config.schedule.warmup_steps) == pytest.approx(0.5, rel=1e-5)
  assert lr(config.schedule.total_steps) == pytest.approx(0.0, abs=1e-9)
  assert (config.input.image_size, config.eval.resize_size, config.eval.crop_size) == (
    176,
    232,
    224,
  )
  assert config.input.trivial_augment and config.input.random_erasing == 0.1
  assert (config.mixing.mixup_alpha, config.mixing.cutmix_alpha) == (0.2, 1.0)
  # torchvision: alpha = (1 - 0.99998) x 8 GPUs x 128 x 32 steps / 600 epochs.
  assert 1 - config.ema.decay == pytest.approx(2e-5 * 1024 * 32 / 600)
  assert config.ema.every_steps == 32
