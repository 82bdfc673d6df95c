"""A workdir's own files beside its checkpoints: the write check, `config.json`, its history."""

import contextlib
import json

import jax
import ml_collections
from etils import epath

from resnet_jax import checkpointing, config_lib, errors, paths

CONFIG_FILE = 'config.json'
CONFIG_HISTORY_FILE = 'config_history.jsonl'


def prepare_workdir(workdir):
  """Creates `workdir` and checks that every process can write into it."""
  path = paths.workdir_path(workdir)
  probe = path / f'.write_test.{jax.process_index()}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise errors.WorkdirError(
      f'cannot write into --workdir={workdir} ({type(e).__name__}: {e.strerror or e}); '
      'choose a writable directory.'
    ) from e


def record_config(workdir, config, step: int):
  """Writes `config.json` (the config that trains from `step` on) once this
  run has saved a checkpoint; a config that changed on resume is also kept in
  `config_history.jsonl` (one line per change, with the step it took over).
  Only process 0 writes."""
  if jax.process_index() != 0:
    return
  path = paths.workdir_path(workdir)
  current = json.loads(config.to_json_best_effort())
  config_file, history = path / CONFIG_FILE, path / CONFIG_HISTORY_FILE
  previous = None
  if config_file.exists():
    with contextlib.suppress(ValueError):  # Unreadable (cut short): replaced whole.
      previous = json.loads(config_file.read_text())
  if previous == current:
    return
  lines = history.read_text().splitlines() if history.exists() else []
  if previous is not None and not lines:  # The first config gets a line too.
    lines.append(json.dumps({'from_step': 0, 'config': previous}))
  lines.append(json.dumps({'from_step': step, 'config': current}))
  if previous is not None:
    history.write_text('\n'.join(lines) + '\n')
  config_file.write_text(json.dumps(current, indent=2))


def read_config(workdir) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (typed: `config_lib.from_saved`):
  its `config.json`, or else the one saved in its latest checkpoint (a copied
  `checkpoints/` is self-contained)."""
  path = paths.workdir_path(workdir)
  saved = None
  if (path / CONFIG_FILE).exists():
    saved = _read_config_json(path / CONFIG_FILE)
  elif (path / checkpointing.CHECKPOINT_DIR).is_dir():
    with checkpointing.manager(workdir, create=False) as mngr:
      step = mngr.latest_step()
      saved = checkpointing.read_meta(mngr, step).get('config') if step is not None else None
  if not saved:
    raise errors.MissingError(
      f'{path / CONFIG_FILE} does not exist: {workdir!r} is not a '
      'training workdir of this project (train into it first).'
    )
  return config_lib.from_saved(saved)


def _read_config_json(file: epath.Path) -> dict:
  """A workdir's `config.json`; ConfigError naming it if it is not a JSON config."""
  try:
    saved = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.ConfigError(
      f'{file} is not valid JSON ({errors.first_line(e)}); delete it to use the config '
      'saved in the latest checkpoint, or pass --config=<the config file it was trained with>'
    ) from e
  if not isinstance(saved, dict):
    raise errors.ConfigError(
      f'{file} holds a JSON {type(saved).__name__}, not a config (an object); delete it '
      'to use the config saved in the latest checkpoint, or pass --config=<the config file>'
    )
  return saved
