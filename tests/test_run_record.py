"""What a run records of where it runs (`run_record`) and the scans' progress bars."""

import io
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import pytest

from resnet_jax import errors, progress, run_record

ENV = {
  'backend': 'gpu',
  'jax_platforms': None,
  'device_kind': 'NVIDIA H200',
  'device_count': 16,
  'local_device_count': 8,
  'process_index': 1,
  'process_count': 2,
  'hostname': 'node7',
  'python': '3.12.3',
  'versions': {'jax': '0.10.2', 'jaxlib': '0.10.2', 'flax': '0.12.8', 'grain': None},
  'git': {'revision': 'abc1234def5678', 'dirty': True},
  'argv': ['main.py', '--workdir=w'],
  'start_time': '2025-01-01T00:00:00+00:00',
}


def test_environment_says_where_this_process_runs():
  env = run_record.environment()
  assert env['backend'] == jax.default_backend() == 'cpu'
  assert env['device_count'] == jax.device_count() and env['local_device_count'] >= 1
  assert isinstance(env['device_kind'], str) and env['device_kind']
  assert (env['process_index'], env['process_count']) == (0, 1)
  assert isinstance(env['hostname'], str) and env['python'].count('.') == 2
  assert env['versions']['jax'] == jax.__version__
  assert set(env['versions']) == set(run_record.PACKAGES)
  assert env['argv'] == sys.argv
  assert env['start_time'].endswith('+00:00')  # UTC.
  head = _git_head()
  if head is None:  # Installed from an archive: no checkout to name.
    assert env['git'] is None
  else:
    assert env['git']['revision'] == head and isinstance(env['git']['dirty'], bool)
  assert json.loads(json.dumps(env)) == env  # JSON-ready as it is.


def _git_head() -> str | None:
  """HEAD of the checkout holding the tests, None outside one (or without git)."""
  if shutil.which('git') is None:
    return None
  result = subprocess.run(
    ['git', 'rev-parse', 'HEAD'], cwd=os.path.dirname(__file__), capture_output=True, text=True
  )
  return result.stdout.strip() if result.returncode == 0 else None


def test_describe_names_jax_devices_processes_versions_and_the_revision():
  text = run_record.describe(ENV)
  assert 1 <= len(text.splitlines()) <= 3
  assert text.startswith('JAX 0.10.2 on gpu: 16 x NVIDIA H200 (8 local), process 1 of 2 on node7\n')
  assert 'flax 0.12.8' in text and 'grain' not in text  # Missing packages are left out.
  assert 'git abc1234 (dirty)' in text
  clean = run_record.describe({**ENV, 'git': {'revision': 'abc1234def', 'dirty': False}})
  assert 'git abc1234;' in clean
  assert 'git unknown' in run_record.describe({**ENV, 'git': None})


def _host(*present):
  """Probes of a host where only the paths or programs in `present` exist."""
  return {'exists': lambda p: p in present, 'which': lambda name: name if name in present else None}


@pytest.mark.parametrize(
  'present, install',
  [
    (('/dev/nvidia0',), 'jax[cuda12]'),
    (('nvidia-smi',), 'jax[cuda12]'),
    (('/dev/accel0',), 'jax[tpu]'),
    (('/dev/vfio/0',), 'jax[tpu]'),
  ],
)
def test_cpu_jax_on_a_host_with_an_accelerator_is_warned_of(present, install):
  env = {**ENV, 'backend': 'cpu'}
  warning = run_record.accelerator_warning(env, **_host(*present))
  assert warning.startswith('warning: JAX runs on the CPU') and install in warning
  assert len(warning.splitlines()) == 1


def test_no_warning_without_an_accelerator_on_one_or_when_cpu_is_asked_for():
  cpu = {**ENV, 'backend': 'cpu'}
  assert run_record.accelerator_warning(cpu, **_host()) is None
  assert run_record.accelerator_warning(ENV, **_host('/dev/nvidia0')) is None  # On the GPU.
  asked = {**cpu, 'jax_platforms': 'cpu'}
  assert run_record.accelerator_warning(asked, **_host('/dev/nvidia0')) is None


def test_git_revision_of_a_checkout_and_of_no_checkout(tmp_path, monkeypatch):
  assert run_record.git_revision(str(tmp_path)) is None  # Not a checkout.
  if shutil.which('git') is None:
    pytest.skip('git is not installed')
  git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', '-C', str(tmp_path)]
  subprocess.run([*git, 'init', '-q'], check=True)
  (tmp_path / 'a.txt').write_text('a')
  subprocess.run([*git, 'add', 'a.txt'], check=True)
  subprocess.run([*git, 'commit', '-qm', 'a'], check=True)
  head = subprocess.run([*git, 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout
  assert run_record.git_revision(str(tmp_path)) == {'revision': head.strip(), 'dirty': False}
  (tmp_path / 'a.txt').write_text('b')
  assert run_record.git_revision(str(tmp_path))['dirty'] is True
  monkeypatch.setenv('PATH', str(tmp_path / 'nowhere'))  # No git at all.
  assert run_record.git_revision(str(tmp_path)) is None


def test_record_writes_env_json_and_keeps_the_previous_ones(tmp_path):
  first, second = {**ENV, 'start_time': 'first'}, {**ENV, 'start_time': 'second'}
  run_record.record(tmp_path, first)
  assert json.loads((tmp_path / 'env.json').read_text()) == first
  assert not (tmp_path / 'env_history.jsonl').exists()
  run_record.record(tmp_path, second)
  run_record.record(tmp_path, ENV)
  assert json.loads((tmp_path / 'env.json').read_text()) == ENV
  history = (tmp_path / 'env_history.jsonl').read_text().splitlines()
  assert [json.loads(line) for line in history] == [first, second]


def test_tee_copies_stdout_into_log_txt_and_appends_on_reentry(tmp_path, capsys):
  stream = sys.stdout
  with run_record.tee_stdout(tmp_path):
    assert sys.stdout.isatty() == stream.isatty()  # Everything else is the stream's.
    assert sys.stdout.encoding == stream.encoding
    print('first line')
    print('second', end='')
    print(' line')
  assert sys.stdout is stream
  with run_record.tee_stdout(tmp_path):
    sys.stdout.writelines(['third\n', 'fourth\n'])
  assert (tmp_path / 'log.txt').read_text() == 'first line\nsecond line\nthird\nfourth\n'
  assert capsys.readouterr().out == 'first line\nsecond line\nthird\nfourth\n'


def test_tee_writes_each_line_through_at_once(tmp_path):
  with run_record.tee_stdout(tmp_path):
    print('step 1')
    assert (tmp_path / 'log.txt').read_text() == 'step 1\n'  # A killed run keeps it.


def test_tee_restores_stdout_on_an_exception(tmp_path):
  stream = sys.stdout
  with pytest.raises(RuntimeError, match='boom'), run_record.tee_stdout(tmp_path):
    print('before')
    raise RuntimeError('boom')
  assert sys.stdout is stream
  assert (tmp_path / 'log.txt').read_text() == 'before\n'


def test_tee_opens_the_log_at_the_first_line_only(tmp_path):
  opened = []
  with run_record.tee_stdout(tmp_path / 'run', on_open=lambda log: opened.append(log.write('#\n'))):
    pass
  assert not (tmp_path / 'run').exists() and not opened  # Nothing printed: nothing written.
  with run_record.tee_stdout(tmp_path / 'run', on_open=lambda log: opened.append(log.write('#\n'))):
    print('a')
    print('b')
  assert (tmp_path / 'run' / 'log.txt').read_text() == '#\na\nb\n' and len(opened) == 1


def test_tee_on_open_may_print_itself(tmp_path):
  with run_record.tee_stdout(tmp_path, on_open=lambda log: print('header')):
    print('a')
  assert (tmp_path / 'log.txt').read_text() == 'header\na\n'


def test_tee_stops_the_run_once_when_the_log_cannot_be_written(tmp_path, capsys):
  (tmp_path / 'file').write_text('')  # A file where the workdir should be.
  with run_record.tee_stdout(tmp_path / 'file'):
    with pytest.raises(errors.WriteError, match=r'writing .*file/log\.txt failed'):
      print('still printed')
    print('and the error line after it')  # The log is given up: no second error.
  out, err = capsys.readouterr()
  assert out.startswith('still printed') and out.endswith('and the error line after it\n')
  assert err == ''


def test_logged_run_prints_the_environment_then_records_at_the_first_line(tmp_path, capsys):
  workdir = tmp_path / 'run'
  with run_record.logged_run(workdir, ENV | {'process_index': 0}):
    pass  # Failed before printing anything (bad input, say).
  assert not workdir.exists()
  assert capsys.readouterr().out.startswith('JAX 0.10.2 on gpu')
  with run_record.logged_run(workdir, ENV | {'process_index': 0}):
    print('step 1/3')
  assert json.loads((workdir / 'env.json').read_text())['hostname'] == 'node7'
  log = (workdir / 'log.txt').read_text().splitlines()
  assert log[0].startswith('$ main.py --workdir=w') and log[1].startswith('JAX 0.10.2 on gpu')
  assert log[-1] == 'step 1/3'
  with run_record.logged_run(workdir, ENV | {'process_index': 0}):
    print('resumed')
  log = (workdir / 'log.txt').read_text().splitlines()
  assert log[-5:] == ['', log[0], *log[1:3], 'resumed']  # Each start under its header.
  assert len((workdir / 'env_history.jsonl').read_text().splitlines()) == 1


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_draws_on_a_terminal_only():
  terminal, pipe = _Terminal(), io.StringIO()
  assert list(progress.progress(range(3), 3, 'eval test (center)', stream=terminal)) == [0, 1, 2]
  assert 'eval test (center)' in terminal.getvalue() and '/3' in terminal.getvalue()
  assert list(progress.progress(range(3), 3, 'eval test (center)', stream=pipe)) == [0, 1, 2]
  assert pipe.getvalue() == ''
  assert progress.enabled(terminal) and not progress.enabled(pipe)


def test_git_revision_never_hangs(tmp_path, monkeypatch):
  slow = tmp_path / 'bin'
  slow.mkdir()
  (slow / 'git').write_text(f'#!/bin/sh\n{shutil.which("sleep")} 30\n')  # A child holds the pipe.
  os.chmod(slow / 'git', 0o755)
  monkeypatch.setenv('PATH', str(slow))
  monkeypatch.setattr(run_record, 'GIT_TIMEOUT_S', 0.5)
  start = time.monotonic()
  assert run_record.git_revision(str(tmp_path)) is None
  assert time.monotonic() - start < 10
