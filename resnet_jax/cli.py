"""What every `python -m resnet_jax...` command line shares: absl flags, and
bad input reported as one `error:` line (exit 1) instead of a traceback.

`run(main)` is `absl.app.run(main)` with two additions:
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
"""

import difflib
import importlib.util
import os
import sys

from absl import app, flags

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
    fail(_config_file_error(argv) or _config_field_error(argv) or _first_line(e))
  # ml_collections defers some config file errors (a missing file) to first use.
  if (message := _config_file_error(argv)) is not None:
    fail(message)
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


def load_config_file(path: str):
  """The config of a `configs/*.py` file (its `get_config()`; `path:arg`
  passes an argument, as ml_collections does)."""
  path, _, arg = path.partition(':')
  spec = importlib.util.spec_from_file_location('_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def nearest_field_error(config, field: str) -> str | None:
  """Why `--config.<field>` names no field of `config`, with the nearest
  valid name; None if it names one."""
  node, done = config, []
  for part in field.split('.'):
    keys = list(node.keys()) if hasattr(node, 'keys') else []
    if part not in keys:
      where = '.'.join(done)
      match = difflib.get_close_matches(part, keys, n=1, cutoff=0.5)
      hint = (
        f'did you mean --config.{".".join(done + match)}?'
        if match
        else f'valid fields{" of " + where if where else ""}: {", ".join(sorted(keys))}'
      )
      return f'--config.{field}: the config has no field {part!r}; {hint}'
    node, done = node[part], done + [part]
  return None


def _config_field_error(argv) -> str | None:
  paths = flag_values(argv, 'config')
  overrides = _config_overrides(argv)
  if not paths or not overrides:
    return None
  config = load_config_file(paths[-1])  # Loads: `_config_file_error` came first.
  for field, _ in overrides:
    if (message := nearest_field_error(config, field)) is not None:
      return message
  return None


def _config_file_error(argv) -> str | None:
  """Why the `--config` file cannot be loaded; None if it can (or none is given)."""
  paths = flag_values(argv, 'config')
  if not paths:
    return None
  path = paths[-1].partition(':')[0]
  if not os.path.isfile(path):
    return f'--config={path}: no such file (the configs are in configs/*.py)'
  try:
    load_config_file(paths[-1])
  except SyntaxError as e:
    return f'--config={path}: line {e.lineno}: {e.msg}'
  except errors.UserError as e:  # Its message says what to fix (a workdir's saved config).
    return _first_line(e)
  except Exception as e:  # noqa: BLE001 - whatever get_config() raised.
    return f'--config={path}: get_config() raised {type(e).__name__}: {_first_line(e)}'
  return None
