"""One run per workdir: a lock file that names its holder.

Training and `--mode=evaluate` hold `WORKDIR/lock.json` while they write into
the workdir; a second run started on it stops at once with one line naming
the holder (host, pid, since when; the file also has its command line) and
changes nothing. Process 0
takes the lock for every process of a run: the others learn the outcome in a
collective and stop with it.

A lock left by a run that died (SIGKILL, a lost host) is stale and taken over
with a `warning:` line: on the holder's own host, once its pid is gone; from
any host, once the holder stopped refreshing it (a thread rewrites it every
`REFRESH_S`; stale after `STALE_AFTER_S`). On a local or network file system
the lock is created atomically (`O_EXCL`), so of two runs started together
exactly one gets it. On object stores (`gs://...`) there is no exclusive
create: the check and the write are two requests, so two runs started within
the same second may both pass; a run started later is refused as locally.
"""

import contextlib
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid

from etils import epath

from resnet_jax import errors, paths

LOCK_FILE = 'lock.json'
REFRESH_S = 30.0
# Several refresh periods: a holder whose storage is slow is not taken over.
STALE_AFTER_S = 300.0


def _holder_record(purpose: str) -> dict:
  now = time.time()
  return {
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'purpose': purpose,
    'command': shlex.join(sys.argv),
    'since': time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(now)),
    'refreshed': now,
    'token': uuid.uuid4().hex,
  }


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process: alive.
    return True
  return True


def stale_reason(holder: dict, now: float | None = None) -> str | None:
  """Why a lock's holder is gone (None: it may still be running)."""
  now = time.time() if now is None else now
  if holder.get('host') == socket.gethostname() and not _pid_alive(int(holder.get('pid', -1))):
    return f'pid {holder.get("pid")} is not running on {holder.get("host")}'
  age = now - float(holder.get('refreshed', 0))
  if age > STALE_AFTER_S:
    return f'it was last refreshed {age:.0f} s ago'
  return None


def describe(holder: dict) -> str:
  """Who holds a lock (its command line is in the file, too long for a line)."""
  return (
    f'{holder.get("purpose", "a run")} on host {holder.get("host")}, pid {holder.get("pid")}, '
    f'since {holder.get("since")}'
  )


def _read(path: epath.Path) -> dict | None:
  """The lock's record; None if there is none; {} if it cannot be parsed
  (a holder killed while writing it)."""
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  try:
    record = json.loads(text)
  except ValueError:
    return {}
  return record if isinstance(record, dict) else {}


def _create(path: epath.Path, record: dict) -> bool:
  """Writes the lock if there is none; False if another holds it."""
  text = json.dumps(record, indent=2) + '\n'
  if paths.is_remote(path):
    if path.exists():
      return False
    path.write_text(text)
    return True
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  return True


def _remove_stale(path: epath.Path, seen: dict) -> None:
  """Moves the stale lock aside, unless another run replaced it meanwhile."""
  if paths.is_remote(path):
    path.unlink(missing_ok=True)
    return
  aside = epath.Path(f'{path}.stale.{os.getpid()}')
  try:
    os.rename(path, aside)  # Atomic: of two runs taking it over, one moves it.
  except FileNotFoundError:
    return
  if _read(aside) != seen:  # A fresh lock of another run: put it back.
    with contextlib.suppress(OSError):
      os.rename(aside, path)
    return
  aside.unlink(missing_ok=True)


def _write(path: epath.Path, record: dict) -> None:
  """Rewrites our own lock (a refresh) whole, atomically where possible."""
  tmp = epath.Path(f'{path}.tmp.{os.getpid()}')
  tmp.write_text(json.dumps(record, indent=2) + '\n')
  tmp.replace(path)


def acquire(workdir, purpose: str) -> dict:
  """Takes `WORKDIR/lock.json` for this process; returns its record.

  Raises:
    errors.WorkdirError: another run holds it (the line names the holder).
  """
  path = epath.Path(workdir) / LOCK_FILE
  record = _holder_record(purpose)
  for _ in range(3):  # Lost races with other starters: look again.
    if _create(path, record):
      return record
    holder = _read(path)
    if holder is None:
      continue
    reason = stale_reason(holder) if holder else 'its record cannot be read'
    if reason is None:
      raise errors.WorkdirError(
        f'{workdir} is in use by {describe(holder)}: one run at a time per workdir. '
        f'Wait for it to end (or stop it), or use another --workdir; if that run is '
        f'gone, remove {path}.'
      )
    _remove_stale(path, holder)
    if _create(path, record):
      print(
        f'warning: took over the lock of {workdir} from {describe(holder)}: {reason}.',
        file=sys.stderr,
        flush=True,
      )
      return record
  raise errors.WorkdirError(f'{workdir}: other runs keep taking {path}; start one run at a time.')


def release(workdir, record: dict) -> None:
  """Removes the lock if it is still this run's."""
  path = epath.Path(workdir) / LOCK_FILE
  with contextlib.suppress(OSError):
    if (_read(path) or {}).get('token') == record['token']:
      path.unlink()


class _Refresher(threading.Thread):
  """Rewrites the lock's `refreshed` time every `REFRESH_S`, so that other
  hosts can tell a live holder from a dead one."""

  def __init__(self, workdir, record: dict):
    super().__init__(name='workdir-lock-refresh', daemon=True)
    self.path, self.record = epath.Path(workdir) / LOCK_FILE, record
    self.done = threading.Event()

  def run(self):
    while not self.done.wait(REFRESH_S):
      self.record['refreshed'] = time.time()
      # A failed refresh is not a fault of the run: its own writes report
      # storage errors, and a lock not refreshed only becomes stale.
      with contextlib.suppress(OSError):
        _write(self.path, self.record)


@contextlib.contextmanager
def held(workdir, purpose: str, *, is_holder: bool = True, agree=None):
  """Holds the workdir's lock for the body.

  Args:
    workdir: the run's workdir (it must exist).
    purpose: what the holder does ('training', 'evaluation'), for the line
      another run prints.
    is_holder: whether this process takes the lock (process 0 of a run);
      the others only learn whether it was taken.
    agree: `bool -> bool`, True only if every process passes True (a
      collective; `distributed.all_true`); None: one process.
  """
  record, failure = None, None
  if is_holder:
    try:
      record = acquire(workdir, purpose)
    except errors.WorkdirError as e:
      failure = e
  if agree is not None and not agree(failure is None):
    if failure is None:
      if record is not None:
        release(workdir, record)
      failure = errors.WorkdirError(
        f'{workdir} is in use by another run (process 0 says which); use another --workdir.'
      )
  if failure is not None:
    raise failure
  refresher = None
  if record is not None:
    refresher = _Refresher(workdir, record)
    refresher.start()
  try:
    yield
  finally:
    if refresher is not None:
      refresher.done.set()
      refresher.join(timeout=REFRESH_S)  # Not forever on storage that hangs.
      release(workdir, record)
