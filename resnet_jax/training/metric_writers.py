"""Where metrics go: a progress line, TensorBoard event files, a JSON-lines file.

`metrics.jsonl` in the workdir holds one JSON object per write
({"step": ..., "train_loss": ...}); `notebooks/` read it to draw the paper's
Fig. 1 / Fig. 6 curves. Only process 0 writes. Workdirs may be `gs://`
(tensorboardX writes there itself; object stores cannot append, so there
`metrics.jsonl` is rewritten whole at each write: a few thousand lines).
"""

import json
import time

import jax
from etils import epath


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class MetricWriter:
  """Writes scalars to stdout, TensorBoard and `metrics.jsonl` in `workdir`."""

  def __init__(self, workdir: str, total_steps: int):
    self.total_steps = total_steps
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    self._remote_lines = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # No TensorFlow needed.

      path = epath.Path(workdir)
      path.mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(str(path / 'tensorboard'))
      self._jsonl_path = path / 'metrics.jsonl'
      if '://' in str(workdir):
        exists = self._jsonl_path.exists()
        self._remote_lines = self._jsonl_path.read_text().splitlines() if exists else []
      else:
        self._jsonl = open(self._jsonl_path, 'a')

  def write(self, step: int, scalars: dict):
    """Records `scalars` (name -> number) at `step` in TensorBoard and JSONL."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    line = json.dumps({'step': step, 'time': time.time(), **scalars})
    if self._remote_lines is not None:
      self._remote_lines.append(line)
      self._jsonl_path.write_text('\n'.join(self._remote_lines) + '\n')
    else:
      self._jsonl.write(line + '\n')
      self._jsonl.flush()
    self._tb.flush()

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
    if self.enabled:
      self._tb.close()
      if self._jsonl is not None:
        self._jsonl.close()
