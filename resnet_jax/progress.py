"""Progress bars for the long scans (evaluation passes, the pixel-mean pass).

Drawn by process 0 only, and only when the stream (stderr) is a terminal: a
log file or a pipe (`cifar_table`'s `train.log`, the tests) gets no bar
lines. Bars clear themselves when done (`leave=False`).
"""

import sys
from collections.abc import Iterable, Iterator

import jax


def enabled(stream=None) -> bool:
  """Whether a bar would be drawn on `stream` (default: stderr) here."""
  stream = sys.stderr if stream is None else stream
  isatty = getattr(stream, 'isatty', None)
  return jax.process_index() == 0 and callable(isatty) and bool(isatty())


def progress(iterable: Iterable, total: int | None, desc: str, stream=None) -> Iterator:
  """`iterable` itself, with a bar of `total` steps named `desc` on `stream`
  (default: stderr) where `enabled(stream)`."""
  stream = sys.stderr if stream is None else stream
  if not enabled(stream):
    yield from iterable
    return
  import tqdm  # Only where a bar is drawn.

  yield from tqdm.tqdm(
    iterable, total=total, desc=desc, file=stream, leave=False, dynamic_ncols=True
  )
