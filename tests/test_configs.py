"""Tests of the experiment configs, their validation, schedule and decay mask.

Every file under configs/ is loaded the way `config_flags` loads it (by path,
then `get_config()`) and must encode the paper's section 4.2 recipe.
"""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import config_lib, models, train

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'configs')
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))
# Section 4.2 / Table 6 / Fig. 6: the CIFAR-10 nets the paper trains.
PAPER_MODELS = ([f'cifar_resnet{d}' for d in (20, 32, 44, 56, 110, 1202)] +
                [f'cifar_plain{d}' for d in (20, 32, 44, 56, 110)])
WARMUP_MODELS = ('cifar_resnet110', 'cifar_resnet1202', 'cifar_plain110')


def _load(path):
  """The file's `get_config()`, loaded by path as config_flags does."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f'_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _model_name(path):
  """configs/cifar10_resnet20.py -> 'cifar_resnet20'."""
  stem = os.path.splitext(os.path.basename(path))[0]
  assert stem.startswith('cifar10_'), stem
  return 'cifar_' + stem[len('cifar10_'):]




def test_config_files_exist_for_every_paper_model():
  assert CONFIG_FILES
  assert set(PAPER_MODELS) <= {_model_name(p) for p in CONFIG_FILES}


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_file_encodes_the_paper_recipe(path):
  config = _load(path)
  for num_devices in (1, 8):
    config_lib.validate(config, num_devices=num_devices)
  model = train.create_model(config)
  assert isinstance(model, models.ResNet) and model.num_classes == 10
  assert config.model == _model_name(path)
  assert config.input.batch_size == 128
  assert config.optimizer.momentum == 0.9
  assert config.optimizer.weight_decay == 1e-4
  assert not config.optimizer.exclude_bn_and_bias  # Decay on all weights.
  s = config.schedule
  assert s.base_lr == 0.1 and s.decay_factor == 0.1
  assert tuple(s.boundaries) == (32_000, 48_000)
  assert s.total_steps == 64_000
  assert s.warmup_lr == (0.01 if config.model in WARMUP_MODELS else 0.0)




def _set(field, value):
  """A mutation that sets the dotted `field` of a config to `value`."""

  def mutate(config):
    *parents, leaf = field.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value

  return mutate


def test_validate_accepts_the_default():
  config_lib.validate(config_lib.cifar10(), num_devices=1)
  config_lib.validate(config_lib.cifar10(), num_devices=8, num_processes=2)


@pytest.mark.parametrize('mutate,num_devices,words', [
    (_set('model', 'cifar_resnet21'), 1, ['unknown model', 'cifar_resnet21', '--config.model',
                                          'cifar_resnet20']),
    (_set('model_options.foo', 1), 1, ['model_options', 'foo', 'shortcut']),
    (_set('input.dataset', 'mnist'), 1, ['dataset', 'mnist', '--config.input.dataset',
                                         'cifar10_jpeg']),
    (_set('input.batch_size', 128), 3, ['input.batch_size=128', '3 devices',
                                        '--config.input.batch_size']),
    (_set('input.batch_size', 0), 1, ['input.batch_size=0', '--config.input.batch_size']),
    (_set('input.eval_batch_size', 1001), 2, ['input.eval_batch_size=1001',
                                              '--config.input.eval_batch_size']),
    (_set('schedule.boundaries', (32_000, 64_000)), 1, ['schedule.boundaries', 'total_steps']),
    (_set('schedule.boundaries', (32_000, 70_000)), 1, ['schedule.boundaries', 'total_steps']),
    (_set('schedule.boundaries', (48_000, 32_000)), 1, ['schedule.boundaries', 'increasing']),
    (_set('schedule.boundaries', (0, 32_000)), 1, ['schedule.boundaries', 'positive']),
    (_set('schedule.total_steps', 0), 1, ['schedule.total_steps']),
    (_set('model_options.bn_group_size', 48), 1, ['bn_group_size=48', 'per-device batch 128']),
    (_set('model_options.bn_group_size', 64), 4, ['bn_group_size=64', 'per-device batch 32']),
    (_set('log_every_steps', 0), 1, ['log_every_steps=0', 'positive']),
    (_set('log_every_steps', -5), 1, ['log_every_steps=-5', 'positive']),
    (_set('eval_every_steps', 0), 1, ['eval_every_steps']),
    (_set('schedule.warmup_lr', -0.01), 1, ['warmup_lr']),
])
def test_validate_rejects_bad_configs(mutate, num_devices, words):
  config = config_lib.cifar10()
  mutate(config)
  with pytest.raises(ValueError) as error:
    config_lib.validate(config, num_devices=num_devices)
  for word in words:
    assert word in str(error.value)


def test_validate_accepts_a_dividing_bn_group_size():
  config = config_lib.cifar10()
  config.model_options.bn_group_size = 64
  config_lib.validate(config, num_devices=2)


def test_validate_rejects_repeated_boundaries():
  config = config_lib.cifar10()
  config.schedule.boundaries = (32_000, 32_000)
  with pytest.raises(ValueError, match='schedule.boundaries'):
    config_lib.validate(config, num_devices=1)


def test_validate_rejects_zero_bn_group_size():
  config = config_lib.cifar10()
  config.model_options.bn_group_size = 0
  with pytest.raises(ValueError, match='bn_group_size'):
    config_lib.validate(config, num_devices=1)




def test_learning_rate_schedule_steps_at_the_boundaries():
  schedule = train.learning_rate_schedule(config_lib.cifar10())
  expected = {0: 0.1, 1: 0.1, 31_999: 0.1, 32_000: 0.01, 32_001: 0.01, 47_999: 0.01,
              48_000: 0.001, 63_999: 0.001}
  got = {step: float(schedule(jnp.asarray(step, jnp.int32))) for step in expected}
  for step, lr in expected.items():
    np.testing.assert_allclose(got[step], lr, rtol=1e-6, err_msg=f'step {step}')




def _cifar20_params():
  model = models.create_model('cifar_resnet20')
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))['params']


def _named_leaves(tree):
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_weight_decay_mask_excluding_bn_and_bias_marks_only_kernels():
  params = _cifar20_params()
  mask = train.weight_decay_mask(params, exclude_bn_and_bias=True)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  leaves, marks = _named_leaves(params), _named_leaves(mask)
  assert all(name.endswith(("['kernel']", "['scale']", "['bias']")) for name in leaves)
  for name, mark in marks.items():
    assert mark is (name.endswith("['kernel']")), name
  # Scanned stages stack their kernels (5-D) and BN params (2-D).
  stacked = [name for name in leaves if '_rest' in name]
  assert any(marks[n] and leaves[n].ndim == 5 for n in stacked)
  assert any(not marks[n] and leaves[n].ndim == 2 for n in stacked)
  assert marks["['fc']['kernel']"] and not marks["['fc']['bias']"]


def test_weight_decay_mask_without_exclusion_marks_everything():
  params = _cifar20_params()
  mask = train.weight_decay_mask(params, exclude_bn_and_bias=False)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  assert all(mark is True for mark in jax.tree.leaves(mask))
