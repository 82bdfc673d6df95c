"""Errors that mean bad input (config, data, checkpoint, workdir), not a bug.

`main` prints their message alone, one line, and exits 1: the message says
what is wrong and how to fix it, so a traceback would only hide it. Each also
derives from the builtin type callers would expect (`ValueError`, ...).
Command lines run their work under `one_line_errors()`.
"""

import contextlib
import sys


class UserError(Exception):
  """Bad input; the message names the fix."""


class ConfigError(UserError, ValueError):
  """A config that cannot run (or does not match the workdir's checkpoints)."""


class MissingError(UserError, FileNotFoundError):
  """A dataset, workdir or checkpoint that is not there."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be read."""


class WorkdirError(UserError, OSError):
  """A workdir that cannot be written."""


class DivergedError(UserError, FloatingPointError):
  """Training produced a non-finite loss or gradient."""


@contextlib.contextmanager
def one_line_errors():
  """For a command line: a `UserError` prints `error: <message>` alone and
  exits 1. Orbax's async reader callbacks report 'Event loop is closed' after
  a failed read: noise around that one line, so not printed."""
  sys.unraisablehook = _quiet_closed_event_loops
  try:
    yield
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


def _quiet_closed_event_loops(unraisable):
  if not (
    isinstance(unraisable.exc_value, RuntimeError)
    and 'Event loop is closed' in str(unraisable.exc_value)
  ):
    sys.__unraisablehook__(unraisable)
