"""Orbax checkpoints of the train state: what they hold, what they must agree on.

A checkpoint of step N holds three items: `state` (the whole train state:
params, BN statistics, optimizer and schedule state, rng, and the input
normalisation constants, so a checkpoint is evaluated without the training
data), `data` (each process's input-iterator position, one file per process,
written by Grain's own Orbax handler) and `meta` (the experiment's structure,
its data order and its whole config). Every process takes part in every save
and restore. Loading a workdir's net for inference is `trained_workdir`'s;
the workdir's other files are `workdir`'s.

Workdirs may be local paths or any `etils.epath` path (`gs://bucket/run`).
An unreadable latest checkpoint is never deleted: `restore_latest` moves it
aside (`N.unreadable`, which Orbax ignores) and resumes from the newest good
one.
"""

import contextlib
import json
import sys

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from resnet_jax import distributed, errors, experiment, orbax_quiet, paths

CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_SUFFIX = '.unreadable'


def manager(workdir, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager (close it, or use it as a context)."""
  return ocp.CheckpointManager(
    paths.workdir_path(workdir) / CHECKPOINT_DIR,
    options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
    item_names=('state', 'data', 'meta'),
  )


@contextlib.contextmanager
def managed(workdir, keep: int = 3):
  """`manager(workdir, keep)` as a context that, when the run fails, closes it
  without raising again (a failed save would re-raise on close, hiding the
  one-line error the run raised for it)."""
  mngr = manager(workdir, keep)
  try:
    yield mngr
  except BaseException:
    with contextlib.suppress(Exception):
      mngr.close()
    raise
  mngr.close()


def structure(config: ml_collections.ConfigDict) -> dict:
  """What a checkpoint must agree on with the config that restores it."""
  opts = {
    k: v
    for k, v in config.model_options.items()
    if k not in ('dtype', 'bn_group_size', 'bn_momentum', 'bn_epsilon', 'scan_blocks')
    and v is not None
  }
  opts['num_classes'] = experiment.model_from_config(config).num_classes
  out = {'model': config.model, 'model_options': opts, 'dataset': config.input.dataset}
  # The optimizer's state has another structure per kind: resuming under
  # another would fail to restore (and be taken for an unreadable checkpoint).
  # Named only when not the paper's SGD, so older checkpoints still match.
  kind = config.optimizer.get('kind', 'sgd')
  if kind != 'sgd':
    out['optimizer'] = kind
  if config.get('ema', {}).get('decay'):  # The average's variables are in the state too.
    out['ema'] = True
  return out


def data_order(config, process_count: int, num_workers: int | None) -> dict:
  """What decides the meaning of a saved data position: resuming with other
  values would silently feed another sequence of batches."""
  return {
    'batch_size': config.input.batch_size,
    'seed': config.seed,
    'process_count': process_count,
    'num_workers': num_workers,
  }


class DataPosition:
  """An input iterator's saved position, in the form Grain's Orbax handler
  (`grain.checkpoint.CheckpointSave/Restore`) writes: one JSON file per
  process. The loop saves the position after the last batch it *used*
  (`data.core.prefetch`'s iterator), not that of the reader, which runs ahead."""

  def __init__(self, state=None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes):
    self.state = json.loads(state)

  def start_prefetch(self):
    """Called by Grain's handler after a restore; nothing runs ahead here."""


# What to do about a checkpoint that cannot be read when no other is tried.
LEFT_UNTOUCHED = (
  'It was left untouched; remove that step directory to use an earlier one, or use a fresh '
  '--workdir.'
)


def unreadable(mngr, step, e) -> errors.CheckpointError:
  """CheckpointError: checkpoint `step` cannot be read (`e`, Orbax's error, in one line)."""
  # TensorStore appends a repr of its whole spec: not for a one-line report.
  first_line = (str(e).strip().splitlines() or [''])[0].split('. See full TensorStore')[0][:300]
  return errors.CheckpointError(
    f'checkpoint {step} in {mngr.directory} cannot be read ({type(e).__name__}: {first_line})'
  )


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The `meta` item of `step`; CheckpointError if it cannot be read."""
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  except Exception as e:  # Orbax raises many types; one clear line instead.
    raise unreadable(mngr, step, e) from e


def check_meta(mngr, step: int, meta: dict, config, order: dict | None = None):
  """Fails fast if `meta` is of another experiment (or, given `order`, of
  another data order: see `data_order`)."""
  saved, wanted = meta.get('structure'), structure(config)
  if saved and 'num_classes' not in saved.get('model_options', {}):
    # Saved before the number of classes was recorded: it was the dataset's.
    wanted['model_options'].pop('num_classes')
  if saved != wanted:
    raise errors.ConfigError(
      f'the workdir holds a checkpoint (step {step}) of {saved}, but the config '
      f'asks for {wanted}. Use a fresh --workdir, or the config it was trained with.'
    )
  saved_order = meta.get('data_order')
  if order is not None and saved_order is not None and saved_order != order:
    changed = {k: (saved_order.get(k), v) for k, v in order.items() if saved_order.get(k) != v}
    fixes = ' '.join(
      f'--config.input.{k}={a}'
      if k in ('batch_size', 'num_workers')
      else f'--config.seed={a}'
      if k == 'seed'
      else f'{a} processes'
      for k, (a, _) in changed.items()
    )
    raise errors.ConfigError(
      f'checkpoint {step} in {mngr.directory} was saved with a data order of '
      f'{saved_order}, this run has {order}: its saved data position would '
      f'mean other batches. Resume with {fixes}, or use a fresh --workdir.'
    )


def latest_meta(mngr: ocp.CheckpointManager) -> tuple[int | None, dict | None]:
  """(latest step, its meta), (None, None) without checkpoints; CheckpointError
  if the meta cannot be read."""
  step = mngr.latest_step()
  if step is None:
    return None, None
  try:
    return step, read_meta(mngr, step)
  except errors.CheckpointError as e:
    raise errors.CheckpointError(f'{e}. {LEFT_UNTOUCHED}') from e


def check_matches(mngr: ocp.CheckpointManager, config, order: dict | None = None) -> int | None:
  """The latest step, failing fast if it is a checkpoint of another experiment
  (or of another data order) or cannot be read."""
  step, meta = latest_meta(mngr)
  if step is not None:
    check_meta(mngr, step, meta, config, order)
  return step


def meta_item(config, step: int, order: dict | None, class_names=None) -> dict:
  """A checkpoint's `meta` item: what it must agree on, and the whole config."""
  return {
    'structure': structure(config),
    'step': step,
    'data_order': order,
    'config': json.loads(config.to_json_best_effort()),
    'class_names': list(class_names) if class_names else None,
  }


def save(
  mngr: ocp.CheckpointManager,
  step: int,
  state,
  data_position,
  config,
  order: dict | None = None,
  class_names=None,
):
  """Saves `state` and this process's data position (a state dict of the
  input iterator) as step `step`, asynchronously; every process calls it.
  `class_names` (label -> name) travel in the meta, for prediction."""
  mngr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(DataPosition(data_position)),
      meta=ocp.args.JsonSave(meta_item(config, step, order, class_names)),
    ),
    force=True,
  )


def confirm_saves(mngr: ocp.CheckpointManager, step: int | None, now: int, wait: bool = False):
  """SaveError if a save issued so far (the last one: `step`) failed; with
  `wait`, first waits for the save in flight, else returns if it still runs.
  Orbax writes in the background, so a failed write shows only here: the loop
  calls this after every step (`now`: the step training reached)."""
  if not wait and mngr.is_saving_in_progress():
    return  # Not done yet: checking now would wait for it.
  try:
    # With no save in flight this returns at once, or raises what the last
    # save raised (`check_for_errors` misses a failure of its finalize thread).
    mngr.wait_until_finished()
  except Exception as e:  # Orbax raises whatever the storage raised.
    raise _save_failed(mngr, step, now, e) from e


def _save_failed(mngr, step, now, e: Exception) -> errors.SaveError:
  cause = _root_cause(e)
  what = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
  where = getattr(cause, 'filename', None) or mngr.directory
  with contextlib.suppress(Exception):  # Let the rest of the failed save end.
    mngr.wait_until_finished()
  kept = sorted(s for s in mngr.all_steps() if s != step)
  earlier = (
    f'the checkpoints before it ({", ".join(map(str, kept))}) are intact: '
    f'fix the storage, then run the same command to resume from step {kept[-1]}'
    if kept
    else 'no earlier checkpoint exists: fix the storage and start again'
  )
  return errors.SaveError(
    f'saving checkpoint {step} failed ({type(cause).__name__}: {what.lower()}: {where}); '
    f'training stopped at step {now}. {earlier[0].upper()}{earlier[1:]}.'
  )


def _root_cause(e: BaseException) -> BaseException:
  """The storage's own error (the first OSError) in the chain Orbax raised."""
  chain = []
  while e is not None and all(e is not c for c in chain):
    chain.append(e)
    e = e.__cause__ or e.__context__
  return next((c for c in chain if isinstance(c, OSError)), chain[0])


def check_resumable_under(restored, steps_per_dispatch: int, workdir):
  """ConfigError unless a restored (step, ...) can go on in calls of
  `steps_per_dispatch` steps (its step a multiple of it)."""
  if restored is not None and restored[0] % steps_per_dispatch:
    raise errors.ConfigError(
      f'{workdir} holds step {restored[0]}, not a multiple of steps_per_dispatch='
      f'{steps_per_dispatch}; resume with a --config.steps_per_dispatch that divides '
      f'{restored[0]} (e.g. 1), then raise it at a later checkpoint.'
    )


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Restores (state, this process's data position) of `step` onto
  `abstract_state`'s shapes and shardings (`jax.ShapeDtypeStruct`s with
  `.sharding`); CheckpointError if it cannot be read."""
  position = DataPosition()
  try:
    restored = mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(position),
      ),
    )
  except Exception as e:  # Orbax raises many types; one clear line instead.
    raise unreadable(mngr, step, e) from e
  return restored['state'], position.state


def restore_latest(mngr: ocp.CheckpointManager, config, order: dict, abstract_state):
  """(step, state, data position) of the newest readable checkpoint, or None
  if there is none.

  A checkpoint of another experiment or data order fails at once (a user
  error). An unreadable one (truncated file, corrupt metadata) is reported in
  one line and skipped; once an older one restores, the unreadable newer ones
  are moved aside (`N.unreadable`), so that training can save step N again.
  Nothing is deleted. All processes take the same decisions.
  """
  skipped = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      meta = read_meta(mngr, step)
      check_meta(mngr, step, meta, config, order)
      state, position = restore(mngr, step, abstract_state)
      error = None
    except errors.CheckpointError as e:
      error = e
    if distributed.all_true(error is None):
      _set_aside(mngr, skipped)
      return step, state, position
    print(
      f'warning: {error or f"checkpoint {step} cannot be read in another process"}; '
      'trying the one before it.',
      file=sys.stderr,
      flush=True,
    )
    skipped.append(step)
  if skipped:
    raise errors.CheckpointError(
      f'no checkpoint in {mngr.directory} can be read (tried steps {skipped}); '
      'they were left untouched. Use a fresh --workdir.'
    )
  return None


def _set_aside(mngr: ocp.CheckpointManager, steps):
  """Renames unreadable step directories to `N.unreadable` (process 0)."""
  if not steps:
    return
  if jax.process_index() == 0:
    for step in steps:
      source = epath.Path(mngr.directory) / str(step)
      target = source.parent / f'{step}{UNREADABLE_SUFFIX}'
      n = 1
      while target.exists():
        target, n = source.parent / f'{step}{UNREADABLE_SUFFIX}.{n}', n + 1
      source.rename(target)
      print(f'warning: moved unreadable checkpoint {step} to {target}', file=sys.stderr, flush=True)
  distributed.sync('set_aside_unreadable_checkpoints')
  mngr.reload()


def require_state(mngr: ocp.CheckpointManager, step: int):
  """CheckpointError, with the fix, unless checkpoint `step` holds its `state`
  item (a copy or clean-up may have dropped that directory alone)."""
  if not (epath.Path(mngr.directory) / str(step) / 'state').is_dir():
    raise errors.CheckpointError(
      f'checkpoint {step} in {mngr.directory} has no state/ directory (its weights); '
      'remove that step directory to fall back to an earlier checkpoint, or retrain the run'
    )


def latest_step(workdir) -> int | None:
  """The latest committed checkpoint step of `workdir`, None if it has none
  (or no `checkpoints/`); CheckpointError if that step lacks its state.
  Reads only: creates nothing."""
  if not (paths.workdir_path(workdir) / CHECKPOINT_DIR).is_dir():
    return None
  with orbax_quiet.without_missing_metadata_warnings(), manager(workdir, create=False) as mngr:
    step = mngr.latest_step()
    if step is not None:
      require_state(mngr, step)
  return step


def require_checkpoints(workdir, any_step: bool = False):
  """MissingError, with the fix, unless `workdir` has a checkpoint directory
  (`any_step`: and a step in it). Checks only: creates nothing."""
  directory = paths.workdir_path(workdir) / CHECKPOINT_DIR
  if not directory.is_dir() or any_step:
    raise errors.MissingError(
      f'no checkpoint in {directory}; train first or point --workdir at a trained run.'
    )
