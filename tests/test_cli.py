"""Every `python -m` command line: `--help` works, bad flags are one line."""

import os
import subprocess
import sys

import pytest

from resnet_jax import cli, config_lib

from helpers import ROOT

COMMANDS = [
  'resnet_jax.main',
  'resnet_jax.models.complexity',
  'resnet_jax.research.curves',
  'resnet_jax.research.fig7',
  'resnet_jax.research.torchvision_weights',
  'resnet_jax.tools.benchmark',
  'resnet_jax.tools.cifar_table',
  'resnet_jax.tools.input_benchmark',
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


def _one_error_line(result, *words):
  assert result.returncode == 1, (result.stdout[-1000:], result.stderr[-2000:])
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
  for word in words:
    assert word in lines[0], lines[0]


@pytest.mark.parametrize(
  'flags, words',
  [
    (['--config.input.batchsize=1'], ['--config.input.batchsize', '--config.input.batch_size']),
    (['--config.scheduel.base_lr=1'], ['scheduel', '--config.schedule']),
    (['--config.foo=1'], ["'foo'", 'valid fields']),
    (['--config.input.batch_size=abc'], ['--config.input.batch_size=abc', 'int']),
  ],
)
def test_bad_config_fields_are_one_line_naming_the_fix(tmp_path, flags, words):
  _one_error_line(run('resnet_jax.main', CONFIG, f'--workdir={tmp_path}', *flags), *words)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
  'text, words',
  [
    (None, ['no such file']),
    ('def get_config(:\n', ['line 1']),
    ('def get_config():\n  raise RuntimeError("boom")\n', ['RuntimeError', 'boom']),
  ],
)
def test_bad_config_files_are_one_line(tmp_path, text, words):
  path = tmp_path / 'config.py'
  if text is not None:
    path.write_text(text)
  result = run('resnet_jax.main', f'--config={path}', f'--workdir={tmp_path / "w"}')
  _one_error_line(result, str(path), *words)


def test_print_config_shows_overrides_and_exits(tmp_path):
  result = run('resnet_jax.main', CONFIG, '--config.seed=7', '--print_config')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'seed: 7' in result.stdout and 'model: cifar_resnet20' in result.stdout


def test_nearest_field_names_the_closest_valid_one():
  config = config_lib.cifar10()
  assert cli.nearest_field_error(config, 'input.batch_size') is None
  message = cli.nearest_field_error(config, 'optimizer.wieght_decay')
  assert 'did you mean --config.optimizer.weight_decay?' in message
