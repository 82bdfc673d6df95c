"""Errors that mean bad input (config, data, checkpoint, workdir), not a bug.

`main` prints their message alone, one line, and exits 1: the message says
what is wrong and how to fix it, so a traceback would only hide it. Each also
derives from the builtin type callers would expect (`ValueError`, ...).
"""


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
