"""What a run records of where it runs: the environment line printed at the
start, `env.json`, and `log.txt` (a copy of what it prints).

`environment()` gathers the backend, devices, processes, host, package
versions, the project's git revision and the command line; `describe` turns
that into the lines the command line prints first. `record` writes
`WORKDIR/env.json` (a resumed run moves the previous one to
`env_history.jsonl`), and `tee_stdout` copies stdout into `WORKDIR/log.txt`.
`logged_run` is all of it, as `main` runs a mode: the workdir's files are
written once the run prints its first line, so input that fails its checks
before (one `error:` line on stderr) leaves the workdir as it was.
"""

import contextlib
import datetime
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
from etils import epath

from resnet_jax import cpu_devices, errors, paths

PACKAGES = (
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'orbax-checkpoint',
  'grain',
  'tensorflow-datasets',
  'numpy',
)
ENV_FILE = 'env.json'
HISTORY_FILE = 'env_history.jsonl'
LOG_FILE = 'log.txt'
GIT_TIMEOUT_S = 5
# A log in remote storage (gs://...) cannot be appended to: it is rewritten
# whole, at most this often and at the end.
REMOTE_LOG_EVERY_S = 30.0


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def git_revision(directory: str | None = None) -> dict | None:
  """{'revision', 'dirty'} of the git checkout holding the package (or
  `directory`); None when it is not one (an installed copy), git is missing,
  or git does not answer within `GIT_TIMEOUT_S`."""
  package = os.path.dirname(os.path.abspath(__file__))
  directory = directory or package

  def git(*args) -> str | None:
    try:
      # Its own process group: on a timeout, whatever git started goes too
      # (a child left holding the pipe would keep the read waiting).
      with subprocess.Popen(
        ['git', *args],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
      ) as proc:
        try:
          out, _ = proc.communicate(timeout=GIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
          os.killpg(proc.pid, signal.SIGKILL)
          proc.communicate()
          return None
    except (OSError, subprocess.SubprocessError):
      return None
    return out if proc.returncode == 0 else None

  lines = (git('rev-parse', '--show-toplevel', 'HEAD') or '').splitlines()
  if len(lines) != 2:
    return None
  toplevel, revision = lines
  # A copy installed into a virtualenv inside some checkout is not that checkout.
  source = os.path.realpath(os.path.dirname(package))
  if directory == package and os.path.realpath(toplevel) != source:
    return None
  status = git('status', '--porcelain')
  return {'revision': revision, 'dirty': None if status is None else bool(status.strip())}


def environment() -> dict:
  """Where this process runs: JSON-ready (see the module docstring)."""
  devices = jax.devices()
  return {
    'backend': jax.default_backend(),
    'jax_platforms': jax.config.jax_platforms or None,
    'device_kind': devices[0].device_kind if devices else None,
    'device_count': jax.device_count(),
    'local_device_count': jax.local_device_count(),
    'process_index': jax.process_index(),
    'process_count': jax.process_count(),
    # Why the CPU has the devices it has, and whether malloc asks for huge pages.
    'cpu_devices': cpu_devices.describe() if jax.default_backend() == 'cpu' else None,
    'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
    'hostname': socket.gethostname(),
    'python': sys.version.split()[0],
    'versions': {name: _version(name) for name in PACKAGES},
    'git': git_revision(),
    'argv': list(sys.argv),
    'start_time': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
  }


def _cpu_reason(env: dict) -> str:
  return f'; {env["cpu_devices"]}' if env.get('cpu_devices') else ''


def describe(env: dict) -> str:
  """Two lines: JAX, backend, devices and processes; the other versions and
  the git revision."""
  versions = env['versions']
  first = (
    f'JAX {versions.get("jax")} on {env["backend"]}: {env["device_count"]} x '
    f'{env["device_kind"]} ({env["local_device_count"]} local{_cpu_reason(env)}), process '
    f'{env["process_index"]} of {env["process_count"]} on {env["hostname"]}'
  )
  others = [f'{name} {v}' for name, v in versions.items() if name != 'jax' and v]
  git = env.get('git')
  if git:
    dirty = ' (dirty)' if git['dirty'] else ''
    others.append(f'git {git["revision"][:7]}{dirty}')
  else:
    others.append('git unknown')
  return f'{first}\n{", ".join(others)}; Python {env["python"]}'


def accelerator_warning(env: dict, *, exists=os.path.exists, which=shutil.which) -> str | None:
  """A `warning: ...` line when JAX runs on the CPU of a host with an NVIDIA
  GPU or a TPU (JAX without the accelerator's plugin); None otherwise, or
  when CPU was asked for (`JAX_PLATFORMS=cpu`). `exists` and `which` probe
  the host (`os.path.exists`, `shutil.which`)."""
  if env['backend'] != 'cpu' or env.get('jax_platforms') == 'cpu':
    return None
  if exists('/dev/nvidia0') or which('nvidia-smi'):
    found, install = 'an NVIDIA GPU', 'pip install -U "jax[cuda12]"'
  elif exists('/dev/accel0') or exists('/dev/vfio/0'):
    found, install = 'a TPU', 'pip install -U "jax[tpu]"'
  else:
    return None
  return (
    f'warning: JAX runs on the CPU, but this host has {found}: install its JAX with '
    f'`{install}` (or set JAX_PLATFORMS=cpu to use the CPU on purpose)'
  )


def record(workdir, env: dict):
  """Writes `env` to `WORKDIR/env.json` (process 0); a previous one (a resumed
  run) is appended to `env_history.jsonl` first."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  current, history = path / ENV_FILE, path / HISTORY_FILE
  if current.exists():
    text = current.read_text()
    try:
      previous = json.dumps(json.loads(text))  # One line.
    except ValueError:  # Cut short (a run killed as it wrote it): kept as text.
      previous = json.dumps({'unreadable': text})
    before = history.read_text() if history.exists() else ''
    with errors.writing(history):
      history.write_text(before + previous + '\n')
  with errors.writing(current):
    current.write_text(json.dumps(env, indent=2) + '\n')


class _RemoteLog:
  """A file in remote storage written as appended to: rewritten whole."""

  def __init__(self, path: epath.Path):
    self.path = path
    self.text = path.read_text() if path.exists() else ''
    self.written = time.monotonic()

  def write(self, text: str):
    self.text += text

  def tell(self) -> int:
    return len(self.text)

  def flush(self, force: bool = False):
    if force or time.monotonic() - self.written >= REMOTE_LOG_EVERY_S:
      self.path.write_text(self.text)
      self.written = time.monotonic()

  def close(self):
    self.flush(force=True)


def _open_log(path: epath.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  if paths.is_remote(path):
    return _RemoteLog(path)
  return open(path, 'a', buffering=1, encoding='utf-8')  # Line-buffered: a killed run keeps it.


class _Tee:
  """sys.stdout that also writes into a log file, opened at the first write;
  everything else (isatty, fileno, encoding, ...) is the original stream's."""

  def __init__(self, stream, path: epath.Path, on_open):
    self._stream, self._path, self._on_open = stream, path, on_open
    self._log, self._failed = None, False
    self._lock = threading.RLock()  # `on_open` may print: the log is set by then.

  def write(self, text: str) -> int:
    written = self._stream.write(text)
    with self._lock:
      if self._log is None and not self._failed and text:
        self._open()
      if self._log is not None:
        self._guarded(self._log.write, text)
        if '\n' in text:
          self._guarded(self._log.flush)
    return written

  def writelines(self, lines):
    for line in lines:
      self.write(line)

  def flush(self):
    self._stream.flush()
    with self._lock:
      if self._log is not None:
        self._guarded(self._log.flush)

  def _open(self):
    self._log = self._guarded(_open_log, self._path)
    if self._log is not None and self._on_open is not None:
      self._guarded(self._on_open, self._log)

  def _guarded(self, fn, *args):
    """fn(*args); a storage error stops the run (`errors.WriteError`, raised
    from the `print` that met it), once: the log is closed, later lines are
    only printed."""
    try:
      return fn(*args)
    except OSError as e:
      self._failed = True
      log, self._log = self._log, None
      if log is not None:
        with contextlib.suppress(OSError):
          log.close()
      if isinstance(e, errors.WriteError):  # env.json, written as the log opens.
        raise
      with errors.writing(self._path):
        raise

  def close_log(self):
    with self._lock:
      if self._log is not None:
        self._guarded(self._log.close)
        self._log = None

  def __getattr__(self, name):
    return getattr(self._stream, name)


@contextlib.contextmanager
def tee_stdout(workdir, on_open=None):
  """Within it, on process 0, what is printed to sys.stdout is also appended
  to `WORKDIR/log.txt` (line by line); a no-op on other processes.

  The file is opened at the first write (nothing printed: no file), then
  `on_open(file)` is called if given (to write a header, say). sys.stdout is
  restored on exit, also on an exception.
  """
  if jax.process_index() != 0:
    yield
    return
  original = sys.stdout
  tee = _Tee(original, epath.Path(workdir) / LOG_FILE, on_open)
  sys.stdout = tee
  try:
    yield
  finally:
    sys.stdout = original
    tee.close_log()


@contextlib.contextmanager
def logged_run(workdir, env: dict | None = None):
  """How `main` runs a mode: the environment lines on stdout and any
  accelerator warning on stderr (process 0) first, then the mode under
  `tee_stdout`; at its first printed line `record` writes env.json and
  log.txt gets the command and the environment lines."""
  env = environment() if env is None else env
  if env['process_index'] == 0:
    print(describe(env), flush=True)
    if (warning := accelerator_warning(env)) is not None:
      print(warning, file=sys.stderr, flush=True)

  def started(log):
    record(workdir, env)
    gap = '\n' if log.tell() else ''  # Between the starts of a resumed run.
    log.write(f'{gap}$ {shlex.join(env["argv"])}  # {env["start_time"]}\n{describe(env)}\n')

  with tee_stdout(workdir, on_open=started):
    yield
