"""What every `python -m resnet_jax...` command line shares: absl flags, and
bad input reported as one `error:` line (exit 1) instead of a traceback.

`run(main)` is `absl.app.run(main)` with these additions:
- flag parsing errors become one line: a mistyped or unknown `--config.*`
  field (named with its nearest valid name), a value of the wrong type, a
  config file that is missing, does not parse or raises, a `--config.*` field
  given twice (refused: ml_collections would concatenate two tuples);
- `main` runs under `errors.one_line_errors()`, so a `UserError` raised by the
  work (bad data, checkpoint, workdir) is one line too;
- on a CPU host, JAX starts with one device per core (`cpu_devices`), and
  malloc with transparent huge pages (`cpu_memory`: the command starts itself
  again once with glibc's tunable set).
`--help` prints the command's module docstring and its flags (absl's).

Config files and `a.b=value` overrides are read by `ml_collections.config_flags`
everywhere: by the `--config` flag of a command line, and by `load_config` and
`apply_overrides` (tests, notebooks, `--set` of the benchmark table), with the
same one-line errors.
"""

import contextlib
import difflib
import os
import sys

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from resnet_jax import cpu_devices, cpu_memory, errors


def run(main, argv=None):
  """Parses the flags (one-line errors) and runs `main(argv)`."""
  cpu_memory.restart_with_huge_pages()

  def wrapped(args):
    _use_cpu_cores()
    with errors.one_line_errors():
      return main(args)

  app.run(wrapped, argv=argv, flags_parser=_parse_flags)


def _use_cpu_cores():
  """One CPU device per core (`cpu_devices`), before the command starts JAX;
  the count divides the config's batch, if the command has a config."""
  config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
  batch_size = None
  if config is not None and 'input' in config and 'batch_size' in config.input:
    batch_size = config.input.batch_size
  num_processes = flags.FLAGS['num_processes'].value if 'num_processes' in flags.FLAGS else None
  cpu_devices.use_cpu_cores(batch_size, num_processes)


def fail(message: str):
  """Prints `error: message` alone and exits 1."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


_HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull', '--helpxml')


def _parse_flags(argv):
  if (message := _repeated_override_error(argv)) is not None:
    fail(message)
  try:
    rest = flags.FLAGS(argv)
  except SystemExit:
    if any(arg in _HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)  # absl exits 1 after printing the help asked for.
    raise
  except Exception as e:  # noqa: BLE001 - each kind becomes its one line below.
    # A config file that is missing, does not parse or raises; an unknown or
    # mistyped --config field; a value of the wrong type; an unknown flag.
    fail(_config_error(argv) or _first_line(e))
  # ml_collections defers some config file errors (a missing file, an OSError
  # in get_config) to the config's first use: the flag holds no ConfigDict.
  if flag_values(argv, 'config') and 'config' in flags.FLAGS:
    if not isinstance(flags.FLAGS['config'].value, ml_collections.ConfigDict):
      fail(_config_error(argv) or f'--config={flag_values(argv, "config")[-1]}: no config')
  return rest


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  if isinstance(e, (KeyError, AttributeError)):  # ml_collections quotes its message.
    text = text.strip('\'"').replace('\\n', '\n')
  return (text.splitlines() or [type(e).__name__])[0]


def flag_values(argv, name: str) -> list[str]:
  """Values of `--name=...` / `--name ...` in argv."""
  out = []
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      out.append(arg.split('=', 1)[1])
    elif arg == f'--{name}' and i + 1 < len(argv):
      out.append(argv[i + 1])
  return out


def _config_overrides(argv) -> list[tuple[str, str]]:
  """(dotted field, value) of each `--config.a.b=value` in argv."""
  out = []
  for arg in argv:
    if arg.startswith('--config.'):
      field, _, value = arg[len('--config.') :].partition('=')
      out.append((field, value))
  return out


def _repeated_override_error(argv) -> str | None:
  """Why a `--config.*` field given twice is refused: ml_collections would
  concatenate two tuple values (a silent third value), so neither wins."""
  seen = {}
  for field, value in _config_overrides(argv):
    if field in seen:
      return (
        f'--config.{field} is given twice ({seen[field]!r} and {value!r}); '
        'give it once, with the value you want'
      )
    seen[field] = value
  return None


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """A config file's config, read as a command line's `--config` reads it.

  Args:
    spec: `PATH` or `PATH:ARG` (ARG is passed to the file's `get_config`).
    overrides: `a.b=value` assignments, applied in order, each as
      `--config.a.b=value` would be (see `apply_overrides`).

  Returns:
    The config, unlocked.

  Raises:
    UserError: one line: a file that is missing, does not parse, raises or
      returns no ConfigDict; an override naming no field (with the nearest
      valid name) or with a value of the wrong type.
  """
  config = _read_config_file(spec)
  apply_overrides(config, overrides)
  return config


def apply_overrides(config: ml_collections.ConfigDict, assignments, flag: str = '--config.'):
  """Sets fields of `config` from `a.b=value` assignments, in order, parsed by
  `ml_collections.config_flags` as `--config.a.b=value` is (the field's type
  decides: `true`, `(10, 20)`, `bfloat16`).

  Args:
    config: changed in place.
    assignments: `FIELD=VALUE` strings.
    flag: what the errors write before an assignment (`--config.`, `--set=`).

  Raises:
    ConfigError: one line naming the assignment: not FIELD=VALUE, no such
      field (with the nearest valid name), or a value the field cannot take.
  """
  for assignment in assignments:
    field, sep, value = assignment.partition('=')
    if not sep:
      raise errors.ConfigError(f'{flag}{assignment} is not FIELD=VALUE')
    if (message := nearest_field_error(config, field, flag)) is not None:
      raise errors.ConfigError(message)
    argv = ['apply_overrides', f'--config.{assignment}']
    values = flags.FlagValues()
    try:
      config_flags.DEFINE_config_dict(
        'config', config, flag_values=values, lock_config=False, sys_argv=argv
      )
      values(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
      reason = _first_line(e).removeprefix(f'flag {argv[1]}: ')
      raise errors.ConfigError(f'{flag}{assignment}: {reason}') from None


def nearest_field_error(config, field: str, flag: str = '--config.') -> str | None:
  """Why `--config.<field>` (`flag` + field) names no field of `config`, with
  the nearest valid name; None if it names one."""
  node, done = config, []
  for part in field.split('.'):
    if not isinstance(node, ml_collections.ConfigDict):
      return f'{flag}{field}: {".".join(done)} is a value ({type(node).__name__}), not a group'
    keys = list(node.keys())
    if part not in keys:
      where = '.'.join(done)
      match = difflib.get_close_matches(part, keys, n=1, cutoff=0.5)
      hint = (
        f'did you mean {flag}{".".join(done + match)}?'
        if match
        else f'valid fields{" of " + where if where else ""}: {", ".join(sorted(keys))}'
      )
      return f'{flag}{field}: the config has no field {part!r}; {hint}'
    node, done = node[part], done + [part]
  return None


def _config_error(argv) -> str | None:
  """Why argv's `--config` file, or one of its `--config.*` fields, cannot be
  read (the file first); None if they can."""
  specs = flag_values(argv, 'config')
  if not specs:
    return None
  try:
    config = _read_config_file(specs[-1])
  except errors.UserError as e:
    return _first_line(e)
  for field, _ in _config_overrides(argv):
    if (message := nearest_field_error(config, field)) is not None:
      return message
  return None


def _read_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of `PATH[:ARG]`, loaded by `config_flags.DEFINE_config_file`;
  a UserError (one line) if the file cannot give one."""
  path = spec.partition(':')[0]
  if not os.path.isfile(path):
    raise errors.ConfigError(f'--config={path}: no such file (the configs are in configs/*.py)')
  argv = ['config', f'--config={spec}']
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=values, lock_config=False, sys_argv=argv)
  try:
    with _absl_warnings_off():  # A None get_config() is ours to report, in one line.
      values(argv)
      config = values['config'].value
    if config is not None and not isinstance(config, ml_collections.ConfigDict):
      config.keys()  # Raises the error ml_collections deferred (an OSError in get_config).
  except SyntaxError as e:
    raise errors.ConfigError(f'--config={path}: line {e.lineno}: {e.msg}') from None
  except Exception as e:  # noqa: BLE001 - whatever get_config() raised.
    raised = _unwrapped(e)
    if isinstance(raised, errors.UserError):  # Its message says what to fix (a saved config).
      raise raised from None
    raise errors.ConfigError(
      f'--config={path}: get_config() raised {type(raised).__name__}: {_first_line(raised)}'
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.ConfigError(
      f'--config={path}: get_config() returned {type(config).__name__}, not a ConfigDict'
    )
  return config


@contextlib.contextmanager
def _absl_warnings_off():
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


# What absl and ml_collections put around the exception a config file raised.
_WRAPPED = ('Error whilst parsing config file', 'Configuration is not available because')


def _unwrapped(e: BaseException) -> BaseException:
  """The exception a config file's code raised, out of absl's and
  ml_collections' wrappers."""
  while isinstance(e, flags.IllegalFlagValueError) or str(e).startswith(_WRAPPED):
    inner = e.__cause__ or e.__context__
    if inner is None:
      break
    e = inner
  return e
