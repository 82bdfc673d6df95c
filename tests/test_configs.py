"""Tests of the experiment configs, their validation, schedule and decay mask.

Every file under configs/ is loaded the way `config_flags` loads it (by path,
then `get_config()`) and must encode the paper's section 4.2 recipe.
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from resnet_jax import (
  cli,
  config_lib,
  config_validation,
  data,
  distributed,
  errors,
  experiment,
  models,
)
from resnet_jax.data import cifar
from resnet_jax.training import optimizers, schedules
from resnet_jax.training import step as step_lib

from helpers import DATA_DIR, has_dataset

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'configs')
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))
CIFAR_FILES = [p for p in CONFIG_FILES if os.path.basename(p).startswith('cifar10_')]
# Recipes beyond the paper's (large batches, torchvision's): tests/test_recipe_configs.py.
RECIPE_FILES = [
  os.path.join(CONFIG_DIR, f'imagenet_r50_{name}.py') for name in ('goyal', 'lars', 'tv2')
]
IMAGENET_FILES = [
  p for p in CONFIG_FILES if os.path.basename(p).startswith('imagenet_') and p not in RECIPE_FILES
]
IMAGENETTE_FILES = [p for p in CONFIG_FILES if os.path.basename(p).startswith('imagenette_')]
# Short runs of the own-data walkthrough (docs/own_data.md), and fine-tuning.
QUICK_FILES = [p for p in CONFIG_FILES if os.path.basename(p).startswith('quick_')]
FINETUNE_FILES = [p for p in CONFIG_FILES if os.path.basename(p).startswith('finetune_')]
# Bases of studies beyond the paper (resnet_jax.tools.recipe_study): the recipe scaled down.
STUDY_FILES = [p for p in CONFIG_FILES if os.path.basename(p).startswith('study_imagenette_')]
CIFAR_STUDY_FILES = [p for p in CONFIG_FILES if os.path.basename(p).startswith('study_cifar10_')]
# Section 4.2 / Table 6 / Fig. 6: the CIFAR-10 nets the paper trains.
PAPER_MODELS = [f'cifar_resnet{d}' for d in (20, 32, 44, 56, 110, 1202)] + [
  f'cifar_plain{d}' for d in (20, 32, 44, 56, 110)
]
WARMUP_MODELS = ('cifar_resnet110', 'cifar_resnet1202', 'cifar_plain110')
# Tables 2-5: ImageNet experiment -> (model, shortcut option).
IMAGENET_EXPERIMENTS = {
  'imagenet_plain18': ('plain18', None),
  'imagenet_plain34': ('plain34', None),
  'imagenet_r18': ('resnet18', 'A'),
  'imagenet_r34': ('resnet34', 'A'),
  'imagenet_r34_b': ('resnet34', 'B'),
  'imagenet_r34_c': ('resnet34', 'C'),
  'imagenet_r50': ('resnet50', 'B'),
  'imagenet_r101': ('resnet101', 'B'),
  'imagenet_r152': ('resnet152', 'B'),
}


def _stem(path):
  return os.path.splitext(os.path.basename(path))[0]


def _model_name(path):
  """configs/cifar10_resnet20.py -> 'cifar_resnet20'."""
  stem = _stem(path)
  assert stem.startswith('cifar10_'), stem
  return 'cifar_' + stem[len('cifar10_') :]


def test_every_config_file_is_of_a_known_family():
  assert set(CONFIG_FILES) == set(
    CIFAR_FILES
    + IMAGENET_FILES
    + RECIPE_FILES
    + IMAGENETTE_FILES
    + QUICK_FILES
    + FINETUNE_FILES
    + STUDY_FILES
    + CIFAR_STUDY_FILES
  )


def test_config_files_exist_for_every_paper_model():
  assert CONFIG_FILES
  assert set(PAPER_MODELS) <= {_model_name(p) for p in CIFAR_FILES}
  assert set(IMAGENET_EXPERIMENTS) == {_stem(p) for p in IMAGENET_FILES}


@pytest.mark.parametrize('path', CIFAR_FILES, ids=os.path.basename)
def test_config_file_encodes_the_paper_recipe(path):
  config = cli.load_config(path)
  for num_devices in (1, 8):
    config_validation.validate(config, num_devices=num_devices)
  model = experiment.model_from_config(config)
  assert isinstance(model, models.ResNet) and model.num_classes == 10
  assert config.model == _model_name(path)
  assert config.input.batch_size == 128
  assert config.optimizer.momentum == 0.9
  assert config.optimizer.weight_decay == 1e-4
  assert not config.optimizer.exclude_bn_and_bias  # Decay on all weights.
  s = config.schedule
  assert s.base_lr == 0.1 and s.decay_factor == 0.1 and s.kind == 'piecewise'
  assert tuple(s.boundaries) == (32_000, 48_000)
  assert s.total_steps == 64_000
  assert s.warmup_lr == (0.01 if config.model in WARMUP_MODELS else 0.0)
  assert tuple(config.eval.final_protocols) == ('center',)  # The single original view.


@pytest.mark.parametrize('path', IMAGENET_FILES, ids=os.path.basename)
def test_imagenet_config_encodes_section_3_4(path):
  config = cli.load_config(path)
  for num_devices in (1, 8, 256):
    config_validation.validate(config, num_devices=num_devices, num_processes=min(num_devices, 32))
  name, shortcut = IMAGENET_EXPERIMENTS[_stem(path)]
  assert config.model == name
  model = experiment.model_from_config(config)
  assert model.num_classes == 1000 and model.plain == name.startswith('plain')
  if shortcut:
    assert model.shortcut == shortcut
  assert not model.downsample_on_3x3  # Stride on the 1x1, as the paper's models.
  assert config.input.dataset == 'imagenet2012'
  assert config.input.batch_size == 256
  assert config.optimizer.momentum == 0.9 and config.optimizer.weight_decay == 1e-4
  s = config.schedule
  assert s.base_lr == 0.1 and s.decay_factor == 0.1 and s.total_steps == 600_000
  assert s.kind == 'plateau' and config.input.holdout_validation
  assert config_lib.scaled_lr(config) == pytest.approx(0.1)
  assert tuple(config.input.scale_range) == (256, 480) and config.input.image_size == 224
  assert config.input.lighting_std == 0.1
  assert (config.eval.resize_size, config.eval.crop_size) == (256, 224)
  assert tuple(config.eval.scales) == (224, 256, 384, 480, 640)
  assert set(config.eval.final_protocols) == {'center', 'ten_crop', 'multi_scale'}
  # The alternative to the plateau rule validates too.
  config.schedule.kind = 'piecewise'
  config_validation.validate(config, num_devices=8)


@pytest.mark.parametrize('path', IMAGENETTE_FILES, ids=os.path.basename)
@pytest.mark.skipif(not has_dataset('imagenette224'), reason='imagenette224 is not here')
def test_imagenette_config_is_the_imagenet_recipe_on_the_local_proxy(path):
  config = cli.load_config(path)
  config.input.data_dir = DATA_DIR  # Its classes and splits come from its metadata.
  config_validation.validate(config, num_devices=1)
  assert config.input.dataset == 'imagenette224'
  assert experiment.model_from_config(config).num_classes == 10
  reference = config_lib.imagenet(config.model)
  for group in ('optimizer', 'eval'):
    assert config[group].to_dict() == reference[group].to_dict()
  for key in ('image_size', 'scale_range', 'lighting_std', 'normalization', 'batch_size'):
    assert config.input[key] == reference.input[key]


@pytest.mark.skipif(not has_dataset('imagenette224'), reason='imagenette224 is not here')
@pytest.mark.parametrize('path', QUICK_FILES + FINETUNE_FILES + STUDY_FILES, ids=os.path.basename)
def test_walkthrough_configs_are_the_imagenet_recipe_scaled_down(path, tmp_path):
  config = cli.load_config(path)
  if config.input.dataset == 'folder':  # Two classes of one image each are enough here.
    for split, name in (('train', 'a'), ('train', 'b'), ('val', 'a')):
      os.makedirs(tmp_path / split / name, exist_ok=True)
      PIL.Image.new('RGB', (40, 30)).save(tmp_path / split / name / 'x.jpg')
    config.input.data_dir = str(tmp_path)
  else:
    config.input.data_dir = DATA_DIR
  config_validation.validate(config, num_devices=8)
  reference = config_lib.imagenet(config.model)
  assert config.optimizer.to_dict() == reference.optimizer.to_dict()
  assert config.input.lighting_std == reference.input.lighting_std
  assert config.input.normalization == reference.input.normalization
  # The views at a smaller size: the crop sits inside the scale range, as 224 in [256, 480].
  assert config.input.image_size < config.input.scale_range[0]
  assert config.eval.crop_size == config.input.image_size < config.eval.resize_size


@pytest.mark.parametrize('path', CIFAR_STUDY_FILES, ids=os.path.basename)
def test_cifar_study_configs_are_the_paper_recipe_on_fewer_images(path):
  config = cli.load_config(path)
  config_validation.validate(config, num_devices=8)
  reference = config_lib.cifar10(config.model)
  for part in ('optimizer', 'model_options', 'mixing', 'ema'):
    assert config[part].to_dict() == reference[part].to_dict(), part
  assert config.input.train_split.startswith('train[:') and not config.input.holdout_validation
  s = config.schedule
  assert config_lib.scaled_lr(config) == pytest.approx(0.1 * config.input.batch_size / 128)
  assert s.kind == 'piecewise' and s.warmup_steps == 0
  assert tuple(s.boundaries) == (s.total_steps // 2, s.total_steps * 3 // 4)  # As 32k, 48k of 64k.


def test_lr_scales_linearly_with_the_batch():
  config = config_lib.imagenet('resnet50')
  config.input.batch_size = 1024
  assert config_lib.scaled_lr(config) == pytest.approx(0.4)
  assert float(schedules.learning_rate_schedule(config)(0)) == pytest.approx(0.4)
  config.schedule.reference_batch_size = None  # Off: base_lr as given.
  assert config_lib.scaled_lr(config) == pytest.approx(0.1)


def test_every_model_option_can_be_set_from_the_command_line():
  """`--config.model_options.X=...` through main.py's own (locked) config flag."""
  import json
  import subprocess
  import sys

  values = {
    'shortcut': 'C',
    'downsample_on_3x3': True,
    'zero_init_last_bn': True,
    'bn_momentum': 0.99,
    'bn_epsilon': 1e-3,
    'bn_group_size': 32,
    'scan_blocks': False,
    'num_classes': 7,
    'dtype': 'bfloat16',
  }
  assert set(values) == set(models.OPTIONS)
  script = (
    'import json\n'
    'from absl import app\n'
    'from resnet_jax import experiment, main\n'
    'def show(argv):\n'
    '  model = experiment.model_from_config(main.FLAGS.config)\n'
    '  print(json.dumps({k: str(getattr(model, k)) for k in main.FLAGS.config.model_options}))\n'
    'app.run(show)\n'
  )
  flags = [f'--config.model_options.{k}={v}' for k, v in values.items()]
  result = subprocess.run(
    [
      sys.executable,
      '-c',
      script,
      f'--config={os.path.join(CONFIG_DIR, "imagenet_r34.py")}',
      '--workdir=unused',
      *flags,
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=os.path.join(CONFIG_DIR, '..'),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  for key, value in values.items():
    assert got[key] == str(value), key


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
  config_validation.validate(config_lib.cifar10(), num_devices=1)
  config_validation.validate(config_lib.cifar10(), num_devices=8, num_processes=2)


@pytest.mark.parametrize(
  'mutate,num_devices,words',
  [
    (
      _set('model', 'cifar_resnet21'),
      1,
      ['unknown model', 'cifar_resnet21', '--config.model', 'cifar_resnet20'],
    ),
    (_set('model_options.foo', 1), 1, ['model_options', 'foo', 'shortcut']),
    (
      _set('input.dataset', 'cifar11'),
      1,
      ['unknown dataset', 'cifar11', '--config.input.dataset', 'folder'],
    ),
    (
      _set('input.dataset', 'imdb_reviews'),
      1,
      ['imdb_reviews', 'not image classification', '--config.input.dataset'],
    ),
    (
      _set('input.dataset', 'food101'),
      1,
      ['food101', 'varying size', 'configs/imagenet_*.py'],
    ),
    (
      _set('input.batch_size', 128),
      3,
      ['input.batch_size=128', '3 devices', '--config.input.batch_size'],
    ),
    (_set('input.batch_size', 0), 1, ['input.batch_size=0', '--config.input.batch_size']),
    (
      _set('input.eval_batch_size', 0),
      2,
      ['input.eval_batch_size=0', '--config.input.eval_batch_size'],
    ),
    (_set('schedule.boundaries', (32_000, 64_000)), 1, ['schedule.boundaries', 'total_steps']),
    (_set('schedule.boundaries', (32_000, 70_000)), 1, ['schedule.boundaries', 'total_steps']),
    (_set('schedule.boundaries', (48_000, 32_000)), 1, ['schedule.boundaries', 'increasing']),
    (_set('schedule.boundaries', (0, 32_000)), 1, ['schedule.boundaries', 'positive']),
    (_set('schedule.total_steps', 0), 1, ['schedule.total_steps']),
    (_set('model_options.bn_group_size', 48), 1, ['bn_group_size=48', 'per-device batch 128']),
    (_set('model_options.bn_group_size', 48), 4, ['bn_group_size=48', 'per-device batch 32']),
    (_set('log_every_steps', 0), 1, ['log_every_steps=0', 'positive']),
    (_set('log_every_steps', -5), 1, ['log_every_steps=-5', 'positive']),
    (_set('eval_every_steps', 0), 1, ['eval_every_steps']),
    (_set('schedule.warmup_lr', -0.01), 1, ['warmup_lr']),
    (_set('schedule.kind', 'plateau'), 1, ['plateau', 'holdout_validation=True']),
    (_set('schedule.kind', 'exponential'), 1, ['schedule.kind', 'piecewise']),
    (_set('eval.protocol', 'ten_crop'), 1, ['single original view', 'ten_crop']),
    (_set('eval.protocol', 'five_crop'), 1, ['five_crop', '--config.eval.protocol']),
    (_set('eval.protocol', 'ensemble'), 1, ['ensemble_workdirs']),
    (_set('model', 'resnet50'), 1, ['resnet50', 'cifar_*']),
    (_set('model_options.shortcut', 'D'), 1, ['shortcut', "'D'"]),
    (
      _set('steps_per_dispatch', 3),
      1,
      [
        'steps_per_dispatch=3',
        'log_every_steps=100',
        'eval_every_steps=2000',
        'schedule.total_steps=64000',
      ],
    ),
    (_set('steps_per_dispatch', 0), 1, ['steps_per_dispatch=0', 'positive integer']),
    (
      lambda c: c.update(steps_per_dispatch=100, stop_after_steps=150),
      1,
      ['steps_per_dispatch=100', 'stop_after_steps=150'],
    ),
    (
      lambda c: c.input.update(holdout_validation=True, train_split='train[:1000]'),
      1,
      ["train_split='train[:1000]'", 'holdout_validation'],
    ),
  ],
)
def test_validate_rejects_bad_configs(mutate, num_devices, words):
  config = config_lib.cifar10()
  mutate(config)
  with pytest.raises(ValueError) as error:
    config_validation.validate(config, num_devices=num_devices)
  for word in words:
    assert word in str(error.value)


def test_validate_accepts_a_dividing_bn_group_size():
  config = config_lib.cifar10()
  config.model_options.bn_group_size = 64
  config_validation.validate(config, num_devices=2)


def test_any_tfds_image_classification_dataset_by_name():
  # Classes and sizes from TFDS's own metadata; none of these is prepared here.
  config = config_lib.cifar10()
  config.input.dataset = 'cifar100'
  config_validation.validate(config, num_devices=1)
  info = data.dataset_info(config.input)
  assert (info.family, info.num_classes, info.eval_split) == ('cifar', 100, 'test')
  assert experiment.model_from_config(config).num_classes == 100
  config = config_lib.imagenet('resnet50')
  config.input.dataset = 'food101'
  config_validation.validate(config, num_devices=1)
  info = data.dataset_info(config.input)
  assert (info.family, info.num_classes, info.eval_split) == ('imagenet', 101, 'validation')
  assert info.class_names[:2] == ('apple_pie', 'baby_back_ribs')
  with pytest.raises(errors.MissingError, match='tfds build food101'):
    data.check_dataset(config.input)


@pytest.mark.skipif(not has_dataset('cifar10_jpeg'), reason='cifar10_jpeg is not here')
def test_a_prepared_dataset_gives_its_splits_and_names():
  config = config_lib.cifar10()
  config.input.update(dataset='cifar10_jpeg', data_dir=DATA_DIR, eval_split='test[:100]')
  info = data.dataset_info(config.input)
  assert info.splits == {'train': 50_000, 'test': 10_000}
  assert info.class_names[0] == 'airplane' and info.eval_split == 'test'
  data.check_dataset(config.input)


def test_validate_rejects_repeated_boundaries():
  config = config_lib.cifar10()
  config.schedule.boundaries = (32_000, 32_000)
  with pytest.raises(ValueError, match='schedule.boundaries'):
    config_validation.validate(config, num_devices=1)


def test_validate_rejects_zero_bn_group_size():
  config = config_lib.cifar10()
  config.model_options.bn_group_size = 0
  with pytest.raises(ValueError, match='bn_group_size'):
    config_validation.validate(config, num_devices=1)


def test_learning_rate_schedule_steps_at_the_boundaries():
  schedule = schedules.learning_rate_schedule(config_lib.cifar10())
  expected = {
    0: 0.1,
    1: 0.1,
    31_999: 0.1,
    32_000: 0.01,
    32_001: 0.01,
    47_999: 0.01,
    48_000: 0.001,
    63_999: 0.001,
  }
  got = {step: float(schedule(jnp.asarray(step, jnp.int32))) for step in expected}
  for step, lr in expected.items():
    np.testing.assert_allclose(got[step], lr, rtol=1e-6, err_msg=f'step {step}')


def _cifar20_params():
  model = models.create_model('cifar_resnet20')
  return jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )['params']


def _named_leaves(tree):
  return {
    jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def test_weight_decay_mask_excluding_bn_and_bias_marks_only_kernels():
  params = _cifar20_params()
  mask = optimizers.weight_decay_mask(params, exclude_bn_and_bias=True)
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
  mask = optimizers.weight_decay_mask(params, exclude_bn_and_bias=False)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  assert all(mark is True for mark in jax.tree.leaves(mask))


def test_an_imagenet_recipe_serves_small_images_through_its_views():
  config = config_lib.imagenet('resnet50')
  config.input.dataset = 'cifar10'  # Fine-tuning an ImageNet net on upsampled CIFAR images.
  config_validation.validate(config, num_devices=8)
  assert data.dataset_info(config.input).family == 'imagenet'
  config = config_lib.cifar10()
  config.model = 'resnet18'
  with pytest.raises(errors.ConfigError, match="'resnet18' is not meant for"):
    config_validation.validate(config, num_devices=8)


def test_validate_rejects_bad_imagenet_input():
  for field, value, words in [
    ('input.scale_range', (200, 480), ['scale_range', 'image_size']),
    ('input.normalization', 'zca', ['normalization', 'channel_mean_std']),
    ('eval.crop_size', 300, ['crop_size', 'resize_size']),
    ('input.family', 'cifar', ["'cifar' input family", 'imagenet config']),
    ('input.family', 'video', ['input.family', 'imagenet']),
  ]:
    config = config_lib.imagenet('resnet50')
    _set(field, value)(config)
    with pytest.raises(ValueError) as error:
      config_validation.validate(config, num_devices=8)
    for word in words:
      assert word in str(error.value), (field, str(error.value))


def test_plateau_rule_divides_the_lr_after_patience_evaluations():
  """Section 3.4: lr / 10 when the held-out error stops improving."""
  config = config_lib.cifar10()
  config.input.batch_size = 8
  config.input.holdout_validation = True
  config.schedule.kind = 'plateau'
  config.schedule.plateau_patience = 2
  config.schedule.plateau_max_decays = 2
  config_validation.validate(config, num_devices=8)
  images = np.zeros((16, 8, 8, 3), np.uint8)
  split = cifar.ArraySplit(images, np.zeros(16, np.int32))
  dataset = data.create(config, preloaded=(split, {'holdout': split}))
  trainer = step_lib.Trainer(
    config, experiment.model_from_config(config), distributed.make_mesh(), dataset
  )
  norm = jax.device_put(
    {'mean': np.zeros((8, 8, 3), np.float32), 'std': np.ones(3, np.float32)}, trainer.replicated
  )
  state = trainer.init_fn(norm)
  scales = []
  for error in (0.5, 0.4, 0.4, 0.41, 0.39, 0.39, 0.39, 0.2, 0.2, 0.2):
    state = trainer.plateau_fn(state, jnp.float32(error))
    scales.append(float(state.plateau.scale))
  # Improves, then 2 evaluations without improvement -> /10; and again; then
  # the floor of plateau_max_decays=2 decays holds however long it stalls.
  np.testing.assert_allclose(scales, [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01], rtol=1e-5)
  batch = trainer.to_global(
    {'image': np.zeros((8, 8, 8, 3), np.uint8), 'label': np.zeros(8, np.int32)}
  )
  _, metrics = trainer.train_fn(state, batch, {})
  assert float(metrics['learning_rate']) == pytest.approx(0.1 * 0.01)


def test_piecewise_schedule_ignores_the_plateau_rule():
  sentinel = object()  # Not a TrainState: any use of it would raise.
  assert step_lib.plateau_step(sentinel, 0.5, config=config_lib.cifar10()) is sentinel
