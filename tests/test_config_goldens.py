"""Every config file's values, pinned: a new field must leave them as they were.

Each file under configs/ is loaded as `--config` loads it and compared with
tests/goldens/config_<name>.json. `experiment.resolved` adds only the
dataset's number of classes (which needs the dataset at hand), so the
config file's own values are what is pinned. Fields newer than a golden must
hold their 'off' value, so that every paper recipe trains as before.
Deliberate changes: `python tests/test_config_goldens.py` rewrites the goldens.
"""

import glob
import json
import os

import pytest

from resnet_jax import cli

from helpers import flat_fields

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'configs')
GOLDEN_DIR = os.path.join(os.path.dirname(__file__), 'goldens')
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))
# Fields added after the goldens, each with the value that keeps a recipe as it was.
NEW_FIELDS = {
  'optimizer.kind': 'sgd',
  'optimizer.lars_trust_coefficient': 0.001,
  'optimizer.adam_b1': 0.9,
  'optimizer.adam_b2': 0.999,
  'optimizer.adam_eps': 1e-8,
  'label_smoothing': 0.0,
  'schedule.end_lr_fraction': 0.0,
  'schedule.polynomial_power': 2.0,
  'schedule.warmup_steps': 0,
  'schedule.warmup_init_lr': 0.0,
  'mixing.mixup_alpha': 0.0,
  'mixing.cutmix_alpha': 0.0,
  'mixing.cutmix_probability': 0.5,
  'ema.decay': 0.0,
  'ema.every_steps': 1,
  'ema.warmup_steps': 0,
  'gradient_accumulation_steps': 1,
  'eval.ema': False,
  'input.trivial_augment': False,
  'input.random_erasing': 0.0,
  # ImageNet family only:
  'input.train_crop': 'scale',
  'input.crop_area_range': [0.08, 1.0],
  'input.crop_aspect_range': [3 / 4, 4 / 3],
}


def _name(path):
  return os.path.splitext(os.path.basename(path))[0]


def _golden_path(path):
  return os.path.join(GOLDEN_DIR, f'config_{_name(path)}.json')


def _as_json(path):
  return json.loads(cli.load_config(path).to_json_best_effort())


def test_every_config_file_has_a_golden():
  assert CONFIG_FILES
  names = {f'config_{_name(p)}.json' for p in CONFIG_FILES}
  assert names == {os.path.basename(p) for p in glob.glob(os.path.join(GOLDEN_DIR, 'config_*'))}


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_file_resolves_as_its_golden(path):
  with open(_golden_path(path)) as f:
    golden = flat_fields(json.load(f))
  current = flat_fields(_as_json(path))
  assert {key: current.get(key, '<missing>') for key in golden} == golden
  new = {key: value for key, value in current.items() if key not in golden}
  assert new == {key: NEW_FIELDS.get(key, '<unknown field>') for key in new}


def write_goldens():
  os.makedirs(GOLDEN_DIR, exist_ok=True)
  for path in CONFIG_FILES:
    with open(_golden_path(path), 'w') as f:
      json.dump(_as_json(path), f, indent=2, sort_keys=True)
      f.write('\n')


if __name__ == '__main__':
  write_goldens()
