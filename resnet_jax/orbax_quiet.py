"""Orbax's own log lines and unraisable reports, silenced where our one-line errors say it."""

import contextlib
import functools
import logging
import os
import sys

_ORBAX_CODE = f'{os.sep}orbax{os.sep}'
_LOGGERS = ('absl', 'asyncio')


@contextlib.contextmanager
def quiet():
  """Drops Orbax's own reports while the block runs: its log lines (tracebacks
  of a failed background save or read, a missing-metadata warning for every
  checkpoint without the optional `_CHECKPOINT_METADATA`), asyncio's "exception
  was never retrieved" for its reader tasks, and 'Event loop is closed' from
  its finalizers. Where they matter, our one-line error carries their cause.

  A block that ends normally gets back the previous `sys.unraisablehook` and
  loggers. One that raises leaves them quiet to the interpreter's end: the
  threads of a failed save still report as the interpreter shuts down, after
  the error line was printed.
  """
  previous = sys.unraisablehook
  hook = functools.partial(_quiet_orbax_unraisable, previous)
  records = _QuietOrbax()
  loggers = [logging.getLogger(name) for name in _LOGGERS]
  sys.unraisablehook = hook
  for logger in loggers:
    logger.addFilter(records)
  yield  # What the block raises passes through here and skips the restoring.
  for logger in loggers:
    logger.removeFilter(records)
  if sys.unraisablehook is hook:  # Unless someone replaced it since.
    sys.unraisablehook = previous


@contextlib.contextmanager
def without_missing_metadata_warnings():
  """Quiet for a read that needs no `_CHECKPOINT_METADATA` (the inference items)."""
  records, logger = _MissingMetadata(), logging.getLogger('absl')
  logger.addFilter(records)
  try:
    yield
  finally:
    logger.removeFilter(records)


class _QuietOrbax(logging.Filter):
  """Drops log records written from Orbax's code, and asyncio's reports of
  reader tasks whose exception nobody awaited (Orbax's, after a failed read)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if _ORBAX_CODE in record.pathname:
      return False
    return 'exception was never retrieved' not in str(record.msg).split('\n', 1)[0]


class _MissingMetadata(logging.Filter):
  """Orbax's warning for a checkpoint without its optional `_CHECKPOINT_METADATA`."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Metadata file does not exist')


def _quiet_orbax_unraisable(forward, unraisable):
  """Drops exceptions Orbax's reader coroutines and finalizers raise after a
  failed read (nobody can catch them); others go to `forward`."""
  tb, from_orbax = unraisable.exc_traceback, False
  while tb is not None and not from_orbax:
    from_orbax = _ORBAX_CODE in tb.tb_frame.f_code.co_filename
    tb = tb.tb_next
  closed_loop = isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(
    unraisable.exc_value
  )
  if not (from_orbax or closed_loop):
    forward(unraisable)
