"""Where metrics go: a progress line, TensorBoard event files, a JSON-lines file.

`metrics.jsonl` in the workdir holds one JSON object per write
({"step": ..., "train_loss": ...}); `notebooks/` read it to draw the paper's
Fig. 1 / Fig. 6 curves. Only process 0 writes. Workdirs may be `gs://`
(tensorboardX writes there itself; object stores cannot append, so there
`metrics.jsonl` is rewritten whole at each write: a few thousand lines).

Every write reaches storage before `write` returns, in this thread: a write
that fails (disk full) raises `errors.WriteError` at once, which stops the run
in one line, and nothing is left to write at `close`.
"""

import contextlib
import json
import os
import time

import jax
from etils import epath

from resnet_jax import errors, paths

TENSORBOARD_DIR = 'tensorboard'


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class _EventFile:
  """A TensorBoard event file written in the caller's thread (tensorboardX's
  `SummaryWriter` writes from a thread of its own, where a failed write is a
  traceback nobody catches, and its queue then blocks the run)."""

  def __init__(self, directory: epath.Path):
    # Imported here: tensorboardX imports torch where it is installed.
    from tensorboardX import event_file_writer  # No TensorFlow needed.

    directory.mkdir(parents=True, exist_ok=True)
    self._events = event_file_writer.EventsWriter(os.path.join(str(directory), 'events'))

  def write(self, step: int, scalars: dict):
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2

    wall_time = time.time()
    for name, value in scalars.items():
      event = event_pb2.Event(wall_time=wall_time, step=step, summary=summary.scalar(name, value))
      self._events.write_event(event)
    self._events.flush()

  def close(self):
    self._events.close()


class MetricWriter:
  """Writes scalars to stdout, TensorBoard and `metrics.jsonl` in `workdir`."""

  def __init__(self, workdir: str, total_steps: int):
    self.total_steps = total_steps
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    self._remote_lines = None
    if self.enabled:
      path = epath.Path(workdir)
      self._tb_path, self._jsonl_path = path / TENSORBOARD_DIR, path / 'metrics.jsonl'
      with errors.writing(self._tb_path):
        self._tb = _EventFile(self._tb_path)
      with errors.writing(self._jsonl_path):
        if paths.is_remote(workdir):
          exists = self._jsonl_path.exists()
          self._remote_lines = self._jsonl_path.read_text().splitlines() if exists else []
        else:
          self._jsonl = open(self._jsonl_path, 'a')

  def write(self, step: int, scalars: dict):
    """Records `scalars` (name -> number) at `step` in TensorBoard and JSONL."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    line = json.dumps({'step': step, 'time': time.time(), **scalars})
    with errors.writing(self._jsonl_path):
      if self._remote_lines is not None:
        self._remote_lines.append(line)
        self._jsonl_path.write_text('\n'.join(self._remote_lines) + '\n')
      else:
        self._jsonl.write(line + '\n')
        self._jsonl.flush()
    with errors.writing(self._tb_path):
      self._tb.write(step, scalars)

  def progress(self, step: int, scalars: dict, seconds_per_step: float | None):
    """Prints one line: step/total, metrics, speed and ETA."""
    if not self.enabled:
      return
    parts = [f'step {step}/{self.total_steps} ({100 * step / self.total_steps:.1f}%)']
    for name, value in scalars.items():
      if name.endswith('error'):
        parts.append(f'{name} {100 * value:.2f}%')
      elif name in ('images_per_sec',):
        parts.append(f'{value:.0f} img/s')
      elif name == 'step_time_ms':
        parts.append(f'{value:.1f} ms/step')
      else:
        parts.append(f'{name} {value:.4g}')
    if seconds_per_step:
      parts.append(f'ETA {_format_duration((self.total_steps - step) * seconds_per_step)}')
    print(' | '.join(parts), flush=True)

  def close(self):
    """Closes the files; never raises (every write was flushed already, and a
    run that failed must report its own error, not this one)."""
    for f in (self._tb, self._jsonl):
      if f is not None:
        with contextlib.suppress(OSError):
          f.close()
