"""Errors that mean bad input (config, data, checkpoint, workdir) or a fault
of the machine (a save that failed), not a bug.

`main` prints their message alone, one line, and exits 1: the message says
what is wrong and how to fix it, so a traceback would only hide it. Each also
derives from the builtin type callers would expect (`ValueError`, ...).
Command lines run their work under `one_line_errors()`.
"""

import contextlib
import sys

from resnet_jax import orbax_quiet


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
  save) prints one line and exits 130, as shells expect. Orbax's own reports
  are not printed (`orbax_quiet.quiet`): the `error:` line carries their cause.
  """
  with orbax_quiet.quiet():
    try:
      yield
    except UserError as e:
      print(f'error: {e}', file=sys.stderr, flush=True)
      sys.exit(1)
    except KeyboardInterrupt:
      print(INTERRUPTED, file=sys.stderr, flush=True)
      sys.exit(130)
