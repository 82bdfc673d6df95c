"""Fine-tuning: a new run from another run's (or torchvision's) weights, a new
head, frozen parameters and frozen BatchNorm statistics."""

import jax
import numpy as np
import pytest

from resnet_jax import errors, models, trained_workdir, workdir_files
from resnet_jax.training import loop, optimizers
from resnet_jax.weights import init_from
from resnet_jax.weights import torchvision as tw

from helpers import final_params, synthetic_state_dict, tiny_config, tiny_splits


@pytest.fixture(scope='module')
def source_workdir(tmp_path_factory):
  """A short run of the tiny problem (10 classes)."""
  workdir = str(tmp_path_factory.mktemp('source'))
  loop.train_and_evaluate(tiny_config(), workdir, data=tiny_splits())
  return workdir


def _flat(tree):
  return {
    '/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
    for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def test_new_head_frozen_body_and_frozen_statistics_stay_bit_identical(
  source_workdir, tmp_path, capfd
):
  source = trained_workdir.load_workdir(source_workdir)
  config = tiny_config()
  config.model_options.num_classes = 12  # The source's 10-class fc does not fit.
  config.init_from = source_workdir
  config.freeze = r'^(?!fc/)'  # Everything but the classifier.
  config.freeze_batch_stats = True
  workdir = str(tmp_path / 'finetuned')
  loop.train_and_evaluate(config, workdir, data=tiny_splits())
  out = capfd.readouterr().out
  assert f'Initialised from {source_workdir} (step 6)' in out
  assert 'its 10-class fc does not fit 12 classes: fc re-initialised' in out

  state, _ = final_params(workdir, workdir_files.read_config(workdir))
  before = _flat(jax.device_get(source.variables['params']))
  after = _flat(state.params)
  for name, value in after.items():
    if name.startswith('fc/'):
      assert value.shape[-1] == 12
      continue
    np.testing.assert_array_equal(value, before[name], err_msg=name)
  assert after['fc/kernel'].shape == (64, 12)
  for name, value in _flat(state.batch_stats).items():
    np.testing.assert_array_equal(
      value, _flat(jax.device_get(source.variables['batch_stats']))[name], err_msg=name
    )
  assert workdir_files.read_config(workdir).model_options.num_classes == 12


def test_freeze_matching_nothing_and_bad_regex_fail(tmp_path):
  config = tiny_config()
  config.freeze = 'no_such_layer'
  with pytest.raises(errors.ConfigError, match='matches no parameter'):
    loop.train_and_evaluate(config, str(tmp_path / 'a'), data=tiny_splits())
  config.freeze = '(unclosed'
  with pytest.raises(errors.ConfigError, match='not a regular expression'):
    loop.train_and_evaluate(config, str(tmp_path / 'b'), data=tiny_splits())


def test_freeze_labels_by_name():
  params = models.abstract_variables(models.create_model('cifar_resnet20'))['params']
  labels = _flat(optimizers.frozen_labels(params, r'^stage1_'))
  assert labels['stage1_block1/conv1/kernel'] == 'frozen'
  assert labels['stage2_block1/conv1/kernel'] == 'trained' and labels['fc/bias'] == 'trained'


def test_init_from_another_architecture_fails_before_compiling(source_workdir, tmp_path):
  config = tiny_config('cifar_resnet32')
  config.init_from = source_workdir
  with pytest.raises(errors.ConfigError, match='same architecture'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'), data=tiny_splits())
  config.init_from = str(tmp_path / 'nowhere')
  with pytest.raises(errors.MissingError, match='init_from'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'), data=tiny_splits())


def test_torchvision_weights_merge_with_a_new_head(tmp_path):
  path = str(tmp_path / 'r18.safetensors')
  tw.save_file(synthetic_state_dict('resnet18', num_classes=1000), path)
  variables, description = init_from.source_variables(path)
  assert description == f'torchvision weights {path}'
  target = jax.tree.map(
    lambda a: np.zeros(a.shape, a.dtype),
    models.abstract_variables(tw.torchvision_model('resnet18', num_classes=10)),
  )
  merged, kept = init_from.merge(target, variables)
  assert kept == ['params/fc/bias', 'params/fc/kernel']
  np.testing.assert_array_equal(
    merged['params']['stage4_rest']['conv2']['kernel'],
    variables['params']['stage4_rest']['conv2']['kernel'],
  )
  # The per-block layout of a net built without scans takes the same weights.
  unscanned = jax.tree.map(
    lambda a: np.zeros(a.shape, a.dtype),
    models.abstract_variables(tw.torchvision_model('resnet18', 10, scan_blocks=False)),
  )
  merged, _ = init_from.merge(unscanned, variables)
  np.testing.assert_array_equal(
    merged['params']['stage4_block2']['conv2']['kernel'],
    variables['params']['stage4_rest']['conv2']['kernel'][0],
  )


def test_torchvision_weights_need_their_options(tmp_path):
  from resnet_jax import config_lib

  path = str(tmp_path / 'r18.safetensors')
  tw.save_file(synthetic_state_dict('resnet18', num_classes=1000), path)
  config = config_lib.imagenet('resnet18')  # TFDS metadata only: no data is read.
  config.model_options.shortcut = 'A'
  config.init_from = path
  with pytest.raises(errors.ConfigError, match='shortcut=B'):
    init_from.check(config)
  config.model_options.shortcut = 'B'
  init_from.check(config)
  config.model = 'resnet34'
  with pytest.raises(errors.ConfigError, match='torchvision resnet18 weights'):
    init_from.check(config)
