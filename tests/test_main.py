"""The command line as the README runs it, on the real CIFAR-10 JPEG data."""

import json
import os
import subprocess
import sys

import pytest

from helpers import DATA_DIR, ROOT


def run_main(*flags):
  return subprocess.run(
    [sys.executable, '-m', 'resnet_jax.main', '--config=configs/cifar10_resnet20.py', *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.skipif(
  not os.path.isdir(os.path.join(DATA_DIR, 'cifar10_jpeg')),
  reason='../shared/data/tfds/cifar10_jpeg is not here',
)
@pytest.mark.slow
def test_readme_command_trains_and_evaluates(tmp_path):
  flags = [
    f'--workdir={tmp_path}',
    '--config.input.dataset=cifar10_jpeg',
    f'--config.input.data_dir={DATA_DIR}',
    '--config.input.batch_size=16',
    '--config.schedule.total_steps=3',
    '--config.schedule.boundaries=(2,)',
    '--config.log_every_steps=1',
  ]
  result = run_main(*flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 3/3 (100.0%)' in result.stdout
  assert result.stdout.startswith('JAX ')  # Where it runs, first.
  env = json.load(open(tmp_path / 'env.json'))
  assert env['backend'] == 'cpu' and '--mode=evaluate' not in env['argv']
  log = (tmp_path / 'log.txt').read_text()
  assert 'step 3/3 (100.0%)' in log and log.startswith('$ ')
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  final = [r for r in records if 'test_error' in r]
  assert final and final[-1]['step'] == 3 and 0 <= final[-1]['test_error'] <= 1
  result = run_main(*flags, '--mode=evaluate')
  assert result.returncode == 0, result.stderr[-3000:]
  evaluation = json.load(open(tmp_path / 'eval.json'))['protocols']['center']
  assert evaluation['count'] == 10_000  # Every test image, exactly once.
  assert evaluation['top1_error'] == pytest.approx(final[-1]['test_error'])
  assert '| cifar_resnet20 | 1-crop |' in result.stdout  # The paper's table format.
  assert '--mode=evaluate' in json.load(open(tmp_path / 'env.json'))['argv']
  history = (tmp_path / 'env_history.jsonl').read_text().splitlines()
  assert len(history) == 1 and json.loads(history[0])['argv'] == env['argv']
  log = (tmp_path / 'log.txt').read_text()
  assert log.count('\n$ ') == 1 and log.rstrip().endswith(result.stdout.strip().splitlines()[-1])


def test_bad_model_fails_fast_in_one_line_with_the_fix(tmp_path):
  result = run_main(f'--workdir={tmp_path}', '--config.model=resnet19')
  assert result.returncode == 1
  assert result.stderr.startswith("error: bad config: unknown model 'resnet19'")
  assert '--config.model' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # No traceback.


def test_evaluate_on_a_missing_workdir_fails_and_creates_nothing(tmp_path):
  workdir = tmp_path / 'never_trained'
  result = run_main(f'--workdir={workdir}', '--mode=evaluate')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
    f'error: no checkpoint in {workdir}/checkpoints; train first or point '
    '--workdir at a trained run.'
  ]
  assert not workdir.exists()


def test_partial_distributed_flags_are_refused(tmp_path):
  result = run_main(f'--workdir={tmp_path}', '--num_processes=2')
  assert result.returncode == 1
  assert '--coordinator_address=HOST:PORT' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
