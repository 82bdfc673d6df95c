"""The Table 6 launcher: concurrent runs through main, resumable, collected into the table."""

import fcntl
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import DATA_DIR, ROOT

pytestmark = pytest.mark.skipif(
  not os.path.isdir(os.path.join(DATA_DIR, 'cifar10_jpeg')),
  reason='../shared/data/tfds/cifar10_jpeg is not here',
)

# A few steps on a slice of the real data, with the GPU settings (K steps per
# call, the split on the devices) so main's path for them runs end to end.
SHORT = [
  '--config.input.train_split=train[:512]',
  '--config.input.eval_split=test[:100]',
  '--config.input.batch_size=16',
  '--config.input.eval_batch_size=100',
  '--config.schedule.total_steps=4',
  '--config.schedule.boundaries=(2,)',
  '--config.log_every_steps=2',
  '--config.eval_every_steps=4',
  '--config.checkpoint_every_steps=4',
  '--config.steps_per_dispatch=2',
  '--config.input.device_resident=True',
]


def run_table(tmp_path, nets, *extra, seeds='0'):
  command = [
    sys.executable,
    '-m',
    'resnet_jax.tools.cifar_table',
    f'--root={tmp_path}/runs',
    f'--results={tmp_path}/results',
    f'--nets={nets}',
    f'--data_dir={DATA_DIR}',
    f'--seeds={seeds}',
    '--poll_s=1',
    '--',
    *extra,
  ]
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=480)


@pytest.mark.slow
def test_runs_concurrently_then_collects_and_a_rerun_skips_finished_runs(tmp_path):
  result = run_table(tmp_path, 'resnet20,plain20', *SHORT, seeds='0,1')
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert result.stdout.count('started') == 4
  rows = {r['run']: r for r in json.load(open(tmp_path / 'results' / 'table6.json'))}
  assert set(rows) == {'resnet20', 'plain20', 'resnet20_seed1', 'plain20_seed1'}
  seeds = {run: json.load(open(tmp_path / 'results' / run / 'config.json'))['seed'] for run in rows}
  assert seeds == {'resnet20': 0, 'plain20': 0, 'resnet20_seed1': 1, 'plain20_seed1': 1}
  for net, row in rows.items():
    assert row['step'] == 4 and row['count'] == 100
    assert 0 <= row['test_error'] <= 100
    for name in ('metrics.jsonl', 'eval.json', 'config.json', 'train.log'):
      assert (tmp_path / 'results' / net / name).exists()
    saved = json.load(open(tmp_path / 'results' / net / 'config.json'))
    assert saved['steps_per_dispatch'] == 2 and saved['input']['device_resident']
  assert rows['resnet20']['paper_error'] == 8.75 and rows['plain20']['paper_error'] is None
  table = (tmp_path / 'results' / 'table6.md').read_text()
  assert f'| resnet20 | 0.27M | {rows["resnet20"]["test_error"]:.2f} | 8.75 |' in table
  errors = [rows[run]['test_error'] for run in ('resnet20', 'resnet20_seed1')]
  assert (
    f'| resnet20 | 2 | {min(errors):.2f} | {np.mean(errors):.2f} ± '
    f'{np.std(errors, ddof=1):.2f} | 8.75 |'
  ) in table
  assert (tmp_path / 'results' / 'fig6.png').stat().st_size > 10_000
  progress = (tmp_path / 'runs' / 'progress.txt').read_text()
  assert progress.count('finished') == 4, progress

  again = run_table(tmp_path, 'resnet20,plain20', *SHORT, seeds='0,1')
  assert again.returncode == 0 and 'started ' not in again.stdout, again.stdout


def test_a_run_that_fails_is_named_with_its_log(tmp_path):
  short = [flag for flag in SHORT if not flag.startswith('--config.input.batch_size=')]
  result = run_table(tmp_path, 'resnet20', *short, '--config.input.batch_size=7')
  assert result.returncode != 0
  assert 'resnet20 did not finish (exit 1)' in result.stdout
  assert 'error: bad config: input.batch_size=7' in result.stdout  # The log's last lines.
  assert 'error: runs did not finish: resnet20 (exit 1' in result.stderr


def test_a_run_whose_workdir_is_in_use_is_not_started_twice(tmp_path):
  (tmp_path / 'runs' / 'resnet20').mkdir(parents=True)
  with open(tmp_path / 'runs' / 'resnet20' / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # As a run started by another launcher holds it.
    result = run_table(tmp_path, 'resnet20', *SHORT)
  assert result.returncode != 0
  assert 'resnet20 is already running' in result.stdout and 'started resnet20' not in result.stdout
  assert 'resnet20 (already running' in result.stderr
