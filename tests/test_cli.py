"""Every `python -m` command line: `--help` works and says what it does (bad
flags and config files as one line: `test_faults.py`)."""

import os
import subprocess
import sys

import pytest

from resnet_jax import cli, config_lib

from helpers import ROOT

COMMANDS = [
  'resnet_jax.main',
  'resnet_jax.predict',
  'resnet_jax.models.complexity',
  'resnet_jax.research.curves',
  'resnet_jax.research.fig7',
  'resnet_jax.weights.torchvision',
  'resnet_jax.tools.benchmark',
  'resnet_jax.tools.cifar_table',
  'resnet_jax.tools.export_folder',
  'resnet_jax.tools.input_benchmark',
  'resnet_jax.tools.peer_benchmark',
  'resnet_jax.tools.step_profile',
]
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
def test_help_exits_0_and_says_what_it_does(module):
  result = run(module, '--help')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'python -m ' + module in result.stdout  # The module docstring: its usage.


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
