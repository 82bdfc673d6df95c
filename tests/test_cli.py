"""Every `python -m` command line: `--help` works and says what it does and
which flags it takes; the config loader the command lines share (bad flags
and config files through the real command lines: `test_faults.py`)."""

import os
import re
import subprocess
import sys

import pytest

from resnet_jax import cli, config_lib, errors

from helpers import ROOT

# Each command line -> the flags of its own that its --help lists.
COMMANDS = {
  'resnet_jax.main': (
    'config coordinator_address detect_cluster mode num_processes print_config print_summary '
    'process_id workdir'
  ),
  'resnet_jax.predict': 'batch_size ema output top_k workdir',
  'resnet_jax.models.complexity': 'models',
  'resnet_jax.research.curves': 'eval_key labels out',
  'resnet_jax.research.fig7': 'batch_size beside data_dir dataset json label out split workdir',
  'resnet_jax.weights.torchvision': 'export model torch_file workdir',
  'resnet_jax.tools.benchmark': (
    'config dtypes json models profile_dir set steps table table_out warmup'
  ),
  'resnet_jax.tools.cifar_table': (
    'collect_only concurrent data_dir dataset nets poll_s results root seeds'
  ),
  'resnet_jax.tools.recipe_study': 'collect_only data_dir poll_s results root study variants',
  'resnet_jax.tools.export_folder': (
    'classes data_dir dataset out train_per_class train_split val_per_class val_split'
  ),
  'resnet_jax.tools.jpeg_copy_folders': 'data_dir dataset out test_batch train_batches',
  'resnet_jax.tools.jpeg_copy_gap': 'data_dir dataset ema out test_batch workdir',
  'resnet_jax.tools.input_benchmark': (
    'batch_size batches config crop_size data_dir dataset decoders images json num_workers '
    'reencode_hw reencode_quality resize_size scale_max scale_min split train_crop '
    'trivial_augment view'
  ),
  'resnet_jax.tools.peer_benchmark': (
    'config eval_batches json rounds steps threads torch_huge_pages warmup_steps worker'
  ),
  'resnet_jax.tools.step_profile': 'config steps top trace_dir',
  'resnet_jax.tools.torch_step_profile': 'batch_size model steps threads top',
}
CONFIG = '--config=configs/cifar10_resnet20.py'


def run(*argv, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
    [sys.executable, '-m', *argv],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


def test_every_package_module_with_a_command_line_is_listed():
  found = set()
  for directory, _, files in os.walk(os.path.join(ROOT, 'resnet_jax')):
    for name in files:
      path = os.path.join(directory, name)
      if name.endswith('.py') and "__name__ == '__main__'" in open(path).read():
        found.add(os.path.relpath(path, ROOT)[: -len('.py')].replace(os.sep, '.'))
  assert found == set(COMMANDS)


@pytest.mark.parametrize('module', COMMANDS)
def test_help_exits_0_says_what_it_does_and_lists_its_flags(module):
  result = run(module, '--help')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'python -m ' + module in result.stdout  # The module docstring: its usage.
  # absl lists each flag as `  --name: help` (`--[no]name` for a boolean).
  listed = set(re.findall(r'^  --(?:\[no\])?(\w+):', result.stdout, re.MULTILINE))
  assert listed == set(COMMANDS[module].split()), result.stdout[-3000:]


def test_print_config_shows_overrides_and_exits(tmp_path):
  result = run('resnet_jax.main', CONFIG, '--config.seed=7', '--print_config')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'seed: 7' in result.stdout and 'model: cifar_resnet20' in result.stdout


def test_print_summary_shows_stages_and_the_parameter_count_and_exits():
  result = run('resnet_jax.main', CONFIG, '--print_summary')
  assert result.returncode == 0, result.stderr[-2000:]
  for module in ('conv_init', 'stage1_block1', 'stage3_rest', 'fc'):
    assert module in result.stdout
  assert 'stage1_block1/conv1' not in result.stdout  # Stages and blocks, not their layers.
  assert 'float32[1,32,32,3]' in result.stdout  # One CIFAR training image.
  # The paper's 0.27M (Table 6), BatchNorm statistics apart.
  last = result.stdout.strip().splitlines()[-1]
  assert last.startswith('cifar_resnet20 on 32x32 images: 269,722 parameters (0.27M'), last
  assert len(result.stdout.splitlines()) < 80 and result.stderr == ''


def test_nearest_field_names_the_closest_valid_one():
  config = config_lib.cifar10()
  assert cli.nearest_field_error(config, 'input.batch_size') is None
  message = cli.nearest_field_error(config, 'optimizer.wieght_decay')
  assert 'did you mean --config.optimizer.weight_decay?' in message
  assert 'not a group' in cli.nearest_field_error(config, 'seed.value')


def test_load_config_reads_a_file_and_overrides_as_the_command_lines_do():
  config = cli.load_config(
    os.path.join(ROOT, 'configs', 'cifar10_resnet20.py'),
    ['seed=7', 'schedule.boundaries=(10, 20)', 'input.device_resident=true', 'input.data_dir=D'],
  )
  assert config.model == 'cifar_resnet20' and config.seed == 7
  assert tuple(config.schedule.boundaries) == (10, 20) and config.input.device_resident is True
  assert config.input.data_dir == 'D'


@pytest.mark.parametrize(
  'source, overrides, words',
  [
    (None, [], 'no such file'),
    ('def get_config(:', [], 'line 1'),
    ('def get_config():\n  raise RuntimeError("boom")', [], 'raised RuntimeError: boom'),
    ('def get_config():\n  raise ValueError("bad")', [], 'raised ValueError: bad'),
    ('def get_config():\n  open("/no/such/file")', [], 'raised FileNotFoundError'),
    ('def get_config():\n  return None', [], 'returned NoneType, not a ConfigDict'),
    ('CIFAR', ['input.batchsize=1'], 'did you mean --config.input.batch_size?'),
    ('CIFAR', ['foo=1'], 'valid fields: '),
    ('CIFAR', ['input.batch_size=abc'], '--config.input.batch_size=abc: invalid literal'),
    ('CIFAR', ['seed'], '--config.seed is not FIELD=VALUE'),
  ],
)
def test_load_config_errors_are_one_line(tmp_path, source, overrides, words):
  path = tmp_path / 'config.py'
  if source == 'CIFAR':
    path = os.path.join(ROOT, 'configs', 'cifar10_resnet20.py')
  elif source is not None:
    path.write_text(source + '\n')
  with pytest.raises(errors.UserError) as e:
    cli.load_config(str(path), overrides)
  assert words in str(e.value) and '\n' not in str(e.value), str(e.value)
