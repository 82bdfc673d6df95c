"""The workdir lock: one holder, named to others; stale locks taken over."""

import json
import socket
import subprocess
import sys
import time

import pytest

from resnet_jax import errors, workdir_lock


def dead_pid() -> int:
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def write_lock(workdir, **fields):
  record = {
    'host': socket.gethostname(),
    'pid': dead_pid(),
    'purpose': 'training',
    'command': 'python -m resnet_jax.main',
    'since': '2026-01-01 00:00:00 UTC',
    'refreshed': time.time(),
    'token': 'theirs',
    **fields,
  }
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(record))
  return record


def test_a_held_lock_refuses_a_second_holder_naming_the_first(tmp_path):
  with workdir_lock.held(tmp_path, 'training'):
    with pytest.raises(errors.WorkdirError) as e:
      workdir_lock.acquire(tmp_path, 'evaluation')
    message = str(e.value)
    held = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
  assert f'is in use by training on host {socket.gethostname()}, pid {held["pid"]}' in message
  assert held['since'] in message and 'use another --workdir' in message
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # Released.


def test_the_lock_is_released_when_the_run_fails(tmp_path):
  with pytest.raises(ValueError), workdir_lock.held(tmp_path, 'training'):
    raise ValueError
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


@pytest.mark.parametrize(
  'fields, reason',
  [
    ({}, 'is not running on'),  # This host, its pid gone (SIGKILL).
    ({'host': 'elsewhere', 'refreshed': 0.0}, 'last refreshed'),  # Another host, silent.
  ],
)
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, capsys, fields, reason):
  old = write_lock(tmp_path, **fields)
  record = workdir_lock.acquire(tmp_path, 'training')
  err = capsys.readouterr().err
  assert err.startswith(f'warning: took over the lock of {tmp_path} from training on host')
  assert reason in err and len(err.splitlines()) == 1
  held = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
  assert held['token'] == record['token'] != old['token']


def test_a_live_lock_of_another_host_is_respected(tmp_path):
  write_lock(tmp_path, host='elsewhere', pid=1)
  with pytest.raises(errors.WorkdirError, match='in use by training on host elsewhere, pid 1'):
    workdir_lock.acquire(tmp_path, 'training')


def test_an_unreadable_lock_is_stale(tmp_path, capsys):
  (tmp_path / workdir_lock.LOCK_FILE).write_text('{"host": "cut sh')  # Killed as it wrote.
  workdir_lock.acquire(tmp_path, 'training')
  assert 'its record cannot be read' in capsys.readouterr().err


def test_release_leaves_another_holders_lock(tmp_path):
  record = workdir_lock.acquire(tmp_path, 'training')
  write_lock(tmp_path, pid=1)  # Taken over meanwhile (this run was thought dead).
  workdir_lock.release(tmp_path, record)
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())['token'] == 'theirs'


def test_every_process_fails_when_process_0_cannot_take_it(tmp_path):
  write_lock(tmp_path, pid=1)
  # Another process of the run: it does not take the lock, but learns it failed.
  with pytest.raises(errors.WorkdirError, match='process 0 says which'):
    with workdir_lock.held(tmp_path, 'training', is_holder=False, agree=lambda ok: False):
      pass
  with workdir_lock.held(tmp_path, 'training', is_holder=False, agree=lambda ok: ok):
    pass  # Process 0 took it: the others go on, touching nothing.
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())['token'] == 'theirs'


def test_the_holder_refreshes_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, 'REFRESH_S', 0.05)
  with workdir_lock.held(tmp_path, 'training'):
    first = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())['refreshed']
    time.sleep(0.5)
    later = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())['refreshed']
  assert later > first
