"""Errors that mean bad input (config, data, checkpoint, workdir) or a fault
of the machine (a save that failed), not a bug.

`main` prints their message alone, one line, and exits 1: the message says
what is wrong and how to fix it, so a traceback would only hide it. Each also
derives from the builtin type callers would expect (`ValueError`, ...).
Command lines run their work under `one_line_errors()`.
"""

import contextlib
import logging
import os
import sys


class UserError(Exception):
  """Bad input; the message names the fix."""


class ConfigError(UserError, ValueError):
  """A config that cannot run (or does not match the workdir's checkpoints)."""


class MissingError(UserError, FileNotFoundError):
  """A dataset, workdir or checkpoint that is not there."""


class DataError(UserError, ValueError):
  """Data that cannot be read as it should (an unreadable image file, an empty class)."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be read."""


class WorkdirError(UserError, OSError):
  """A workdir that cannot be written."""


class SaveError(UserError, OSError):
  """A checkpoint that could not be written (disk full, permissions, storage)."""


class WriteError(SaveError):
  """A workdir file other than a checkpoint (metrics, logs, results) that could
  not be written."""


class DivergedError(UserError, FloatingPointError):
  """Training produced a non-finite loss or gradient."""


# What a run stopped at once by Ctrl-C says as it exits (code 130).
INTERRUPTED = (
  'error: interrupted by Ctrl-C: stopped at once, without saving; the checkpoints '
  'already saved are kept. Run the same command to resume from the latest.'
)


@contextlib.contextmanager
def writing(path):
  """Turns a storage error (disk full, permissions) while writing `path` into a
  `WriteError` naming it, which stops the run in one line."""
  try:
    yield
  except OSError as e:
    what = (e.strerror or str(e)).lower()
    raise WriteError(f'writing {path} failed ({type(e).__name__}: {what})') from e


def first_line(e: BaseException) -> str:
  """`Type: first line of the message` (at most 200 characters), for a
  one-line report of a library's exception inside our own message."""
  return f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:200]}'


@contextlib.contextmanager
def one_line_errors():
  """For a command line: a `UserError` prints `error: <message>` alone and
  exits 1; a Ctrl-C that interrupts (the second one: the first asks for a
  save) prints one line and exits 130, as shells expect.

  Orbax's own reports are not printed: its log lines (tracebacks of a failed
  background save or read, a missing-metadata warning for every checkpoint
  without the optional `_CHECKPOINT_METADATA`), asyncio's "exception was never
  retrieved" for its reader tasks, and 'Event loop is closed' from its
  finalizers. Where they matter, the `error:` line carries their cause.
  """
  sys.unraisablehook = _quiet_orbax_unraisable
  quiet = _QuietOrbax()
  loggers = [logging.getLogger('absl'), logging.getLogger('asyncio')]
  for logger in loggers:
    logger.addFilter(quiet)
  try:
    yield
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  except KeyboardInterrupt:
    print(INTERRUPTED, file=sys.stderr, flush=True)
    sys.exit(130)
  # On success only: after an error, Orbax's threads of a failed save still
  # report as the interpreter shuts down, so the filter stays to the end.
  for logger in loggers:
    logger.removeFilter(quiet)


class _QuietOrbax(logging.Filter):
  """Drops log records written from Orbax's code, and asyncio's reports of
  reader tasks whose exception nobody awaited (Orbax's, after a failed read)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if _ORBAX_CODE in record.pathname:
      return False
    return 'exception was never retrieved' not in str(record.msg).split('\n', 1)[0]


_ORBAX_CODE = f'{os.sep}orbax{os.sep}'


def _quiet_orbax_unraisable(unraisable):
  """Drops exceptions Orbax's reader coroutines and finalizers raise after a
  failed read (nobody can catch them); others go to Python's hook."""
  tb, from_orbax = unraisable.exc_traceback, False
  while tb is not None and not from_orbax:
    from_orbax = _ORBAX_CODE in tb.tb_frame.f_code.co_filename
    tb = tb.tb_next
  closed_loop = isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(
    unraisable.exc_value
  )
  if not (from_orbax or closed_loop):
    sys.__unraisablehook__(unraisable)
