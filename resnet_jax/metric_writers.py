"""Where metrics go: a progress line, TensorBoard event files, a JSON-lines file.

`metrics.jsonl` in the workdir holds one JSON object per write
({"step": ..., "train_loss": ...}); `notebooks/` read it to draw the paper's
Fig. 1 / Fig. 6 curves. Only process 0 writes.
"""

import json
import os
import time

import jax


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
    if self.enabled:
      from tensorboardX import SummaryWriter  # No TensorFlow needed.
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write(self, step: int, scalars: dict):
    """Records `scalars` (name -> number) at `step` in TensorBoard and JSONL."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')
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
      self._jsonl.close()
