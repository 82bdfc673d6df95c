"""Training runs started as `python -m resnet_jax.main` processes, each in its
own workdir, watched until they end: what the table launchers share.

`launch` starts every unfinished `Run` (a fixed number at once), each with its
output in `WORKDIR/train.log`, holding `WORKDIR/.lock` for as long as the run
lives, and rewrites `ROOT/progress.txt` with each run's latest metrics while
they train. Each start and end goes into `WORKDIR/launches.jsonl` with the
machine it ran on, so the time a run took is measured, resumes included.
Running the launcher again resumes: a finished run is skipped, an
interrupted one started again (`main` resumes it from its checkpoint).
"""

import dataclasses
import fcntl
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import time

import ml_collections

from resnet_jax import cpu_devices, evaluation, run_record
from resnet_jax.research import curves

LAUNCHES_FILE = 'launches.jsonl'
# What a run's results are: its curves, scores, config and log.
RECORD_FILES = ('metrics.jsonl', 'eval.json', 'config.json', 'train.log')
# A gap of more than an hour between metrics records is a pause between resumes.
MAX_RECORD_GAP_S = 3600.0


@dataclasses.dataclass
class Run:
  """One training run: its command, workdir and process."""

  name: str
  workdir: str
  command: list[str] = dataclasses.field(default_factory=list)
  # The run's config, if known: it is finished when `eval.json` holds every
  # final result that `main` writes for it. None: when `eval.json` exists.
  config: ml_collections.ConfigDict | None = None
  process: subprocess.Popen | None = None
  returncode: int | str | None = None

  @property
  def outcome(self) -> str:
    return self.returncode if isinstance(self.returncode, str) else f'exit {self.returncode}'

  @property
  def log_path(self):
    return os.path.join(self.workdir, 'train.log')

  def finished(self) -> bool:
    """Trained to the end and scored (eval.json is written last)."""
    if self.config is None:
      return os.path.exists(os.path.join(self.workdir, 'eval.json'))
    try:
      return evaluation.has_final_results(
        self.workdir, self.config, self.config.schedule.total_steps
      )
    except ValueError:  # eval.json half-written: not yet.
      return False

  def records(self) -> list[dict]:
    """Its metrics.jsonl records so far ([] before the first)."""
    try:
      return curves.read_metrics(self.workdir)
    except (FileNotFoundError, ValueError):  # Not written yet, or a line half-written.
      return []


def cpu_name() -> str:
  """The CPU's model name, from /proc/cpuinfo (else what `platform` knows)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  """Where this process runs: the CPU's model, the cores it may use, the host."""
  return {'cpu': cpu_name(), 'cores': cpu_devices.usable_cores(), 'hostname': socket.gethostname()}


def describe_machine(m: dict) -> str:
  return f'{m["cpu"]}, {m["cores"]} cores (host {m["hostname"]})'


def environment(concurrent: int) -> dict:
  """The runs' environment variables: this one's, with an equal share of one
  GPU's memory for each of `concurrent` runs."""
  env = dict(os.environ)
  if concurrent > 1:
    # JAX takes 75% of a GPU's memory by default: give each run its share.
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / concurrent:.3f}')
  env.setdefault('PYTHONUNBUFFERED', '1')
  return env


def last_records(records: list[dict]) -> tuple[dict, dict]:
  """The latest train and evaluation records."""
  train = [r for r in records if 'train_loss' in r]
  evals = [r for r in records if any(key in r for key in curves.EVAL_KEYS)]
  return (train[-1] if train else {}), (evals[-1] if evals else {})


def _state(run: Run) -> str:
  if run.finished():
    return 'finished'
  if run.returncode is not None:
    return f'did not finish ({run.outcome}; see {run.log_path})'
  return 'running' if run.process is not None else 'waiting'


def progress_lines(runs: list[Run]) -> list[str]:
  """One line per run: its state, latest training metrics and top-1 errors."""
  lines = []
  for run in runs:
    train, scored = last_records(run.records())
    parts = [f'{run.name:>16}: {_state(run)}']
    if train:
      parts.append(
        f'step {train["step"]}, train error {100 * train["train_error"]:.2f}%, '
        f'{train.get("step_time_ms", float("nan")):.1f} ms/step'
      )
    # 'test_error', 'validation_error', 'ema_validation_error', ... (not top-5).
    errors = [k for k in scored if k.endswith('_error') and not k.endswith('top5_error')]
    for key in errors:
      parts.append(f'{key[: -len("_error")].replace("_", " ")} error {100 * scored[key]:.2f}%')
    if errors:
      parts[-1] += f' at {scored["step"]}'
    lines.append(', '.join(parts))
  return lines


def write_progress(runs: list[Run], root: str):
  with open(os.path.join(root, 'progress.txt'), 'w') as f:
    f.write(time.strftime('%Y-%m-%d %H:%M:%S') + '\n' + '\n'.join(progress_lines(runs)) + '\n')


def _lock(workdir: str):
  """The workdir's lock file, locked for this launcher; None if a process
  (a run, or another launcher) holds it."""
  lock = open(os.path.join(workdir, '.lock'), 'w')
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.close()
    return None
  return lock


def _note_launch(run: Run, **event):
  with open(os.path.join(run.workdir, LAUNCHES_FILE), 'a') as f:
    f.write(json.dumps({'time': time.time(), **event}) + '\n')


def _start(run: Run, env: dict) -> bool:
  """Starts the run (its output appended to its log); False if another
  process holds its workdir."""
  os.makedirs(run.workdir, exist_ok=True)
  lock = _lock(run.workdir)
  if lock is None:  # Two trainers in one workdir would corrupt it.
    run.returncode = 'already running'
    print(
      f'{run.name} is already running (a process holds {run.workdir}/.lock: '
      'another launcher, or a run it left behind); not started',
      flush=True,
    )
    return False
  with open(run.log_path, 'a') as log, lock:
    log.write(f'\n$ {" ".join(run.command)}\n')
    log.flush()
    # The run inherits the locked file, so the lock lasts as long as it
    # does, even if this launcher dies first.
    run.process = subprocess.Popen(
      run.command, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(lock.fileno(),)
    )
  _note_launch(run, event='start', command=run.command, machine=machine())
  print(f'started {run.name} (pid {run.process.pid}): {run.log_path}', flush=True)
  return True


def _ended(run: Run) -> bool:
  """Whether the run's process has ended (then recorded, its outcome printed)."""
  if run.process.poll() is None:
    return False
  run.returncode = run.process.returncode
  _note_launch(run, event='end', returncode=run.returncode)
  if run.finished():
    print(f'{run.name} finished', flush=True)
    return True
  with open(run.log_path) as log:
    tail = ''.join(log.readlines()[-5:])
  print(
    f'{run.name} did not finish ({run.outcome}); last lines of {run.log_path}:\n{tail}', flush=True
  )
  return True


def launch(runs: list[Run], concurrent: int, root: str, poll_s: float) -> list[Run]:
  """Runs every unfinished run, `concurrent` at once (0: all); returns those
  that did not finish (failed, stopped early, or already running elsewhere)."""
  todo = [run for run in runs if not run.finished()]
  concurrent = concurrent or len(todo) or 1
  env = environment(concurrent)
  active, unfinished = [], []
  while todo or active:
    while todo and len(active) < concurrent:
      run = todo.pop(0)
      (active if _start(run, env) else unfinished).append(run)
    if not active:
      break
    deadline = time.time() + poll_s
    while time.time() < deadline and all(r.process.poll() is None for r in active):
      time.sleep(min(1.0, poll_s))
    for run in [r for r in active if _ended(r)]:
      active.remove(run)
      if not run.finished():
        unfinished.append(run)
    write_progress(runs, root)
  return unfinished


def unfinished_error(unfinished: list[Run]) -> str:
  """What to say when runs did not finish: each with its outcome and log."""
  return (
    'error: runs did not finish: '
    + ', '.join(f'{r.name} ({r.outcome}, {r.log_path})' for r in unfinished)
    + '; fix the cause and run the same command again to resume them.'
  )


def wall_time(records: list[dict]) -> float | None:
  """Seconds from the first to the last metrics record (resumes included,
  the gaps between them not)."""
  times = sorted(r['time'] for r in records if 'time' in r)
  if len(times) < 2:
    return None
  return sum(min(b - a, MAX_RECORD_GAP_S) for a, b in zip(times, times[1:]))


def launches(workdir: str) -> list[dict]:
  """The starts and ends the launcher recorded in the workdir ([] if none)."""
  path = os.path.join(workdir, LAUNCHES_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def launched_time(events: list[dict], records: list[dict] = ()) -> float | None:
  """Seconds the run's processes lived, from start to end of each launch,
  startup, compiling and evaluations included. A launch without its end (it
  was stopped, or its launcher died) counts until the last metrics record it
  wrote (`records`), or not at all if it wrote none; None without launches."""
  if not any(e['event'] == 'start' for e in events):
    return None
  total, started = 0.0, None
  for event in events:
    if event['event'] == 'start':
      if started is not None:  # The previous launch ended without its end.
        total += _last_record_time(records, started, event['time']) - started
      started = event['time']
    elif started is not None:
      total, started = total + event['time'] - started, None
  if started is not None:
    total += _last_record_time(records, started, math.inf) - started
  return total


def _last_record_time(records: list[dict], start: float, before: float) -> float:
  """The time of the last record in [start, before), `start` if none."""
  return max((r['time'] for r in records if start <= r.get('time', -1) < before), default=start)


def describe_environment(workdir: str) -> str | None:
  """The software and devices the run recorded at its (latest) start, as
  `run_record.describe` writes them; None if it recorded none."""
  try:
    with open(os.path.join(workdir, run_record.ENV_FILE)) as f:
      return run_record.describe(json.load(f))
  except (FileNotFoundError, ValueError, KeyError):  # None, half-written, or of another version.
    return None


def copy_records(run: Run, results: str, names=RECORD_FILES) -> str:
  """Copies the run's files `names` (those it has) into `results/NAME`;
  returns that folder."""
  out = os.path.join(results, run.name)
  os.makedirs(out, exist_ok=True)
  for name in names:
    if os.path.exists(os.path.join(run.workdir, name)):
      shutil.copy(os.path.join(run.workdir, name), out)
  return out
