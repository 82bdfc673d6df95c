"""Faults and bad input: each stops the run in one line and loses nothing saved.

Faults are injected in a child process (`fault_worker.py`): a checkpoint
write that fails, SIGKILL while a checkpoint is written or as the final
evaluation starts, two Ctrl-Cs. Each rerun must end bit-identical with an
uninterrupted run. Bad input goes through the real command lines, forked from
one interpreter, and must leave the workdir as it was.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils import epath

from resnet_jax import config_lib, config_validation, errors, evaluation, models, trained_workdir
from resnet_jax.training import loop

from helpers import (
  DATA_DIR,
  ROOT,
  fault_config,
  final_params,
  has_dataset,
  saved_steps,
  tiny_splits,
)

WORKER = os.path.join(ROOT, 'tests', 'fault_worker.py')


def worker(*args, timeout=300):
  return subprocess.run(
    [sys.executable, WORKER, *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )


def snapshot(directory) -> dict:
  """{relative path: sha256} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return out


def nonempty_lines(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.strip()]


def outcome(workdir) -> tuple:
  """(final params, eval.json) of a finished workdir."""
  state, _ = final_params(str(workdir), fault_config())
  return state.params, json.loads((workdir / 'eval.json').read_text())


def assert_same_outcome(workdir, reference):
  params, results = outcome(workdir)
  want_params, want_results = reference
  jax.tree.map(np.testing.assert_array_equal, params, want_params)
  assert results == want_results


@pytest.fixture(scope='module')
def reference_dir(tmp_path_factory):
  """An uninterrupted run of the fault tests' problem."""
  workdir = tmp_path_factory.mktemp('reference')
  loop.train_and_evaluate(fault_config(), str(workdir), data=tiny_splits())
  return workdir


@pytest.fixture(scope='module')
def reference(reference_dir):
  return outcome(reference_dir)


def rerun(workdir):
  loop.train_and_evaluate(fault_config(), str(workdir), data=tiny_splits())


@pytest.mark.slow
def test_failed_save_stops_at_once_in_one_line_and_keeps_earlier_checkpoints(tmp_path, reference):
  result = worker('train', tmp_path, '--fail_save=6')
  assert result.returncode == 1, result.stderr[-3000:]
  lines = nonempty_lines(result.stderr)
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith('error: saving checkpoint 6 failed'), lines[0]
  assert 'no space left on device' in lines[0] and str(tmp_path / 'checkpoints') in lines[0]
  assert 'resume from step 3' in lines[0]
  # Stopped before the next evaluation (step 9) and without a final one.
  evals = [
    json.loads(line)['step']
    for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
    if 'test_error' in line
  ]
  assert max(evals) == 6 and not (tmp_path / 'eval.json').exists()
  assert saved_steps(tmp_path, fault_config()) == [3]
  rerun(tmp_path)
  assert_same_outcome(tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize(
  'fault, last_saved', [('--kill_at_save=6', [3]), ('--kill_in_final_eval', [6, 9, 12])]
)
def test_kill_during_a_save_or_the_final_eval_then_rerun_is_bit_identical(
  tmp_path, reference, fault, last_saved
):
  result = worker('train', tmp_path, fault)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert saved_steps(tmp_path, fault_config()) == last_saved
  assert not (tmp_path / 'eval.json').exists()
  rerun(tmp_path)
  assert_same_outcome(tmp_path, reference)


def start_worker(*args) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, WORKER, *map(str, args)],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )


def wait_for_line(process, prefix: str):
  for line in process.stdout:
    if line.startswith(prefix):
      return
  raise AssertionError(f'no line starting {prefix!r}: {process.stderr.read()[-3000:]}')


@pytest.mark.slow
def test_second_ctrl_c_exits_130_in_one_line(tmp_path):
  process = start_worker('train', tmp_path, '--step_seconds=0.5', '--total_steps=600')
  try:
    wait_for_line(process, 'step ')  # Steps run from the first log line on.
    process.send_signal(signal.SIGINT)
    first = process.stderr.readline()
    assert first.startswith('Ctrl-C: saving a checkpoint'), first
    process.send_signal(signal.SIGINT)  # Within the current 0.5 s step.
    _, rest = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 130, rest[-3000:]
  lines = nonempty_lines(rest)
  assert len(lines) == 1 and lines[0].startswith('error: interrupted by Ctrl-C'), rest[-3000:]


def test_failed_evaluation_loses_no_training(tmp_path, reference):
  result = worker('train', tmp_path, '--fail_eval=3')
  assert result.returncode == 1, result.stderr[-3000:]
  lines = nonempty_lines(result.stderr)
  assert len(lines) == 1 and 'an unreadable test image' in lines[0], result.stderr[-3000:]
  # The interval before the evaluation was saved, and the config is there.
  assert saved_steps(tmp_path, fault_config()) == [3]
  assert json.loads((tmp_path / 'config.json').read_text())['schedule']['total_steps'] == 12
  rerun(tmp_path)
  assert_same_outcome(tmp_path, reference)


@pytest.mark.parametrize(
  'fault, message',
  [
    (
      'tensorboard:6',
      r'writing \S+/tensorboard failed \(OSError: no space left on device\); '
      r'training stopped at step 6\. Checkpoint 3 is intact',
    ),
    (
      'eval.json',
      r'writing \S+/eval\.json failed \(OSError: no space left on device\); '
      r'training stopped at step 12\. Checkpoint 12 is intact',
    ),
  ],
)
def test_a_writer_fault_stops_in_one_line_and_keeps_the_checkpoints(
  tmp_path, reference, fault, message
):
  result = worker('train', tmp_path, f'--fail_write={fault}')
  assert result.returncode == 1, result.stderr[-3000:]
  lines = nonempty_lines(result.stderr)
  assert len(lines) == 1 and re.match('error: ' + message, lines[0]), result.stderr[-3000:]
  rerun(tmp_path)
  assert_same_outcome(tmp_path, reference)


def test_a_stop_that_reaches_no_step_ends_in_one_line_naming_the_last_checkpoint(tmp_path):
  process = start_worker('train', tmp_path, '--block_at_step=5', '--stop_grace=2')
  try:
    wait_for_line(process, 'blocked')  # Step 4's batch never comes.
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 1, err[-3000:]
  lines = nonempty_lines(err)
  assert len(lines) == 2 and lines[0].startswith('SIGTERM: saving a checkpoint'), err[-3000:]
  assert lines[1].startswith('error: SIGTERM: no step finished within'), lines[1]
  assert lines[1].endswith(
    'The last good checkpoint is step 3: run the same command to resume from it.'
  )
  assert saved_steps(tmp_path, fault_config()) == [3]


@pytest.mark.parametrize('first', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_after_a_stop_request_ends_a_blocked_run_at_once(tmp_path, first):
  process = start_worker('train', tmp_path, '--block_at_step=5')
  try:
    wait_for_line(process, 'blocked')
    process.send_signal(first)
    notice = process.stderr.readline()
    assert notice.startswith('Ctrl-C: saving' if first == signal.SIGINT else 'SIGTERM: saving')
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)  # Far less than the stop's grace time.
  finally:
    process.kill()
  assert process.returncode == 130, rest[-3000:]
  lines = nonempty_lines(rest)
  assert len(lines) == 1 and lines[0].startswith('error: interrupted by Ctrl-C'), rest[-3000:]


def test_a_second_run_in_a_workdir_is_refused_and_a_killed_ones_lock_taken_over(tmp_path, capfd):
  first = start_worker('train', tmp_path, '--step_seconds=0.5', '--total_steps=600')
  try:
    wait_for_line(first, 'step ')
    second = worker('train', tmp_path)
    evaluate = worker('evaluate', tmp_path)
  finally:
    first.kill()
    first.wait()
  for result in (second, evaluate):
    assert result.returncode == 1, result.stderr[-3000:]
    lines = nonempty_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert f'is in use by training on host {socket.gethostname()}, pid {first.pid}' in lines[0]
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all(
    a['step'] < b['step'] for a, b in zip(rows, rows[1:]) if 'train_loss' in a and 'train_loss' in b
  )
  capfd.readouterr()
  rerun(tmp_path)  # The killed run's lock is stale: taken over.
  err = capfd.readouterr().err
  assert f'warning: took over the lock of {tmp_path} from training on host' in err
  assert f'pid {first.pid} is not running' in err
  assert not (tmp_path / 'lock.json').exists()


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_quietly_and_bit_identically(
  tmp_path, reference_dir, reference
):
  workdir = tmp_path / 'run'
  shutil.copytree(reference_dir, workdir)
  os.remove(workdir / 'eval.json')
  data = workdir / 'checkpoints' / '12' / 'state' / 'ocdbt.process_0' / 'd'
  largest = max(data.iterdir(), key=lambda p: p.stat().st_size)
  os.truncate(largest, 100)
  result = worker('train', workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = nonempty_lines(result.stderr)
  assert len(lines) == 2, result.stderr[-3000:]
  assert lines[0].startswith('warning: checkpoint 12') and 'cannot be read' in lines[0]
  assert lines[1].startswith('warning: moved unreadable checkpoint 12')
  assert len(lines[0]) < 500  # TensorStore's repr of its spec is cut off.
  assert_same_outcome(workdir, reference)


def test_evaluate_prints_only_its_result(tmp_path, reference_dir):
  workdir = tmp_path / 'run'
  shutil.copytree(reference_dir, workdir)
  result = worker('evaluate', workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr == ''  # No Orbax warning of a missing metadata file.
  assert '| cifar_resnet20 | 1-crop |' in result.stdout


def _member(tmp_path, num_classes) -> str:
  """A workdir holding a fresh CIFAR net of `num_classes` classes."""
  config = fault_config()
  config.model_options.num_classes = num_classes
  model = models.create_model(config.model, num_classes=num_classes)
  params, batch_stats = models.init_variables(model, (8, 8, 3), jax.random.key(0))
  workdir = str(tmp_path / f'member{num_classes}')
  norm = {'mean': np.zeros((8, 8, 3), np.float32), 'std': np.ones(3, np.float32)}
  state = {'params': params, 'batch_stats': batch_stats, 'norm': norm, 'step': np.int32(0)}
  trained_workdir.save_for_inference(workdir, config, state)
  return workdir


def _no_scoring(monkeypatch):
  def protocol_scores(*args, **kwargs):
    raise AssertionError('scored before the inputs were checked')

  monkeypatch.setattr(evaluation, 'protocol_scores', protocol_scores)


def test_ensemble_members_are_checked_before_any_is_scored(tmp_path, monkeypatch):
  config = fault_config()
  config.eval.protocol = 'ensemble'
  good = _member(tmp_path, 10)
  config.eval.ensemble_workdirs = f'{good},{_member(tmp_path, 20)}'
  _no_scoring(monkeypatch)
  with pytest.raises(errors.ConfigError, match='member.*predicts 20 classes'):
    evaluation.evaluate_workdir(config, str(tmp_path / 'ensemble'), data=tiny_splits())
  config.eval.ensemble_workdirs = f'{good},{tmp_path / "missing"}'
  with pytest.raises(errors.MissingError, match='ensemble member .*missing'):
    evaluation.evaluate_workdir(config, str(tmp_path / 'ensemble'), data=tiny_splits())


def test_cifar_ensemble_defaults_to_the_cifar_view():
  config = config_lib.cifar10()
  config.eval.protocol = 'ensemble'
  config.eval.ensemble_workdirs = 'a,b'
  config_validation.validate(config, 8)
  config.eval.ensemble_protocol = 'ten_crop'
  with pytest.raises(errors.ConfigError, match='ensemble_protocol=center'):
    config_validation.validate(config, 8)


def test_evaluate_into_an_unwritable_workdir_fails_before_scoring(
  tmp_path, reference_dir, monkeypatch
):
  workdir = tmp_path / 'run'
  shutil.copytree(reference_dir, workdir)
  before = snapshot(workdir)
  _no_scoring(monkeypatch)
  real_write_text = epath.Path.write_text

  def write_text(self, *args, **kwargs):  # Root may write anywhere: refuse as a read-only disk.
    if str(self).startswith(str(workdir)):
      raise PermissionError(13, 'Permission denied', str(self))
    return real_write_text(self, *args, **kwargs)

  monkeypatch.setattr(epath.Path, 'write_text', write_text)
  with pytest.raises(errors.WorkdirError, match='cannot write into --workdir'):
    evaluation.evaluate_workdir(fault_config(), str(workdir), data=tiny_splits())
  assert snapshot(workdir) == before


def test_preloaded_labels_beyond_the_classes_are_refused(tmp_path):
  config = fault_config()
  train, evals = tiny_splits()
  train.labels[0] = 12
  with pytest.raises(errors.ConfigError, match='has 13 classes but the model predicts 10'):
    loop.train_and_evaluate(config, str(tmp_path / 'run'), data=(train, evals))
  assert not (tmp_path / 'run').exists()


# Bad input on the command lines: (module, flags, words of the one error line).
MAIN = 'resnet_jax.main'
CIFAR = [
  '--config=configs/cifar10_resnet20.py',
  '--config.input.dataset=cifar10_jpeg',
  f'--config.input.data_dir={DATA_DIR}',
]
CASES = {
  'eval split typo': (MAIN, ['--config.input.eval_split=tst'], ["no split 'tst'"]),
  'train split typo': (
    MAIN,
    ['--config.input.train_split=trian[:100]'],
    ["no split 'trian[:100]'"],
  ),
  'empty train slice': (MAIN, ['--config.input.train_split=train[:0]'], ['no examples']),
  'repeated tuple': (
    MAIN,
    ['--config.schedule.boundaries=(10,20)', '--config.schedule.boundaries=(30,35)'],
    ['--config.schedule.boundaries is given twice'],
  ),
  'negative lr': (MAIN, ['--config.schedule.base_lr=-0.1'], ['schedule.base_lr=-0.1']),
  'zero lr': (MAIN, ['--config.schedule.base_lr=0'], ['schedule.base_lr=0']),
  'negative decay': (MAIN, ['--config.optimizer.weight_decay=-1'], ['weight_decay=-1']),
  'too few classes': (MAIN, ['--config.model_options.num_classes=5'], ['num_classes=5']),
  'unknown dtype': (MAIN, ['--config.model_options.dtype=float7'], ["'float7'"]),
  'unknown field': (MAIN, ['--config.foo=1'], ["'foo'", 'valid fields']),
  'misspelled field': (MAIN, ['--config.input.batchsize=1'], ['--config.input.batch_size']),
  'misspelled group': (MAIN, ['--config.scheduel.base_lr=1'], ['--config.schedule']),
  'wrong type': (MAIN, ['--config.input.batch_size=abc'], ['batch_size=abc', 'int']),
  'cifar ten-crop ensemble': (
    MAIN,
    [
      '--mode=evaluate',
      '--config.eval.protocol=ensemble',
      '--config.eval.ensemble_workdirs=WORKDIR',
      '--config.eval.ensemble_protocol=ten_crop',
    ],
    ['ensemble_protocol'],
  ),
  'missing ensemble member': (
    MAIN,
    ['--mode=evaluate', '--config.eval.protocol=ensemble', '--config.eval.ensemble_workdirs=NONE'],
    ['ensemble member'],
  ),
  'missing config file': (MAIN, ['--config=NONE/config.py'], ['no such file']),
  'config syntax error': (MAIN, ['--config=FILE:def get_config(:'], ['line 1']),
  'config file raises': (
    MAIN,
    ['--config=FILE:def get_config():\n  raise RuntimeError("boom")'],
    ['RuntimeError', 'boom'],
  ),
  # ml_collections wraps a ValueError, and defers an OSError to the config's first use.
  'config file raises ValueError': (
    MAIN,
    ['--config=FILE:def get_config():\n  raise ValueError("bad recipe")'],
    ['get_config() raised ValueError: bad recipe'],
  ),
  'config file raises OSError': (
    MAIN,
    ['--config=FILE:def get_config():\n  open("/no/such/recipe.json")'],
    ['get_config() raised FileNotFoundError', '/no/such/recipe.json'],
  ),
  'fig7 without --out': ('resnet_jax.research.fig7', [], ['--out']),
  'garbage weights': (
    'resnet_jax.weights.torchvision',
    ['--torch_file=FILE.safetensors'],
    ['not a readable .safetensors file'],
  ),
}


@pytest.fixture(scope='module')
def cli_results(tmp_path_factory, reference_dir):
  """Each case's (result, workdir, files before) from one forked run."""
  root = tmp_path_factory.mktemp('cli')
  cases, dirs = [], {}
  for i, (name, (module, flags, _)) in enumerate(CASES.items()):
    workdir = root / f'w{i}'
    shutil.copytree(reference_dir, workdir)  # A trained workdir: nothing may change.
    argv = []
    for flag in flags:
      if flag.startswith('--config=FILE:'):
        path = root / f'config{i}.py'
        path.write_text(flag[len('--config=FILE:') :] + '\n')
        flag = f'--config={path}'
      flag = flag.replace('NONE', str(root / 'missing')).replace('WORKDIR', str(workdir))
      if flag.startswith('--torch_file=FILE'):
        path = root / f'garbage{i}.safetensors'
        path.write_bytes(np.random.default_rng(i).bytes(5000))
        flag, workdir = f'--torch_file={path}', root / f'fresh{i}'
      argv.append(flag)
    if module == MAIN:  # The CIFAR config, or the case's own config file.
      own = [a for a in argv if a.startswith('--config=')]
      argv = (own or CIFAR[:1]) + CIFAR[1:] + [a for a in argv if a not in own]
    argv.append(f'--workdir={workdir}')
    cases.append({'module': module, 'argv': argv})
    dirs[name] = (workdir, snapshot(workdir) if workdir.exists() else None)
  (root / 'cases.json').write_text(json.dumps(cases))
  run = worker('cli', root / 'cases.json', root / 'results.json')
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((root / 'results.json').read_text())
  return {name: (result, *dirs[name]) for name, result in zip(CASES, results)}


# These read the dataset's TFDS metadata before they fail.
NEEDS_DATA = {'eval split typo', 'train split typo', 'empty train slice', 'missing ensemble member'}


@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_is_one_line_exit_1_and_changes_nothing(cli_results, case):
  if case in NEEDS_DATA and not has_dataset('cifar10_jpeg'):
    pytest.skip('needs the local cifar10_jpeg')
  result, workdir, before = cli_results[case]
  assert result['code'] == 1, (result['stdout'][-1000:], result['stderr'][-3000:])
  lines = nonempty_lines(result['stderr'])
  assert len(lines) == 1 and lines[0].startswith('error: '), result['stderr'][-3000:]
  for word in CASES[case][2]:
    assert word in lines[0], lines[0]
  if before is None:
    assert not workdir.exists()
  else:
    assert snapshot(workdir) == before
