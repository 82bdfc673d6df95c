"""Orbax checkpoints: what they hold, what they must agree on, how to load them.

A checkpoint of step N holds three items: `state` (the whole train state:
params, BN statistics, optimizer and schedule state, rng, and the input
normalisation constants, so a checkpoint is evaluated without the training
data), `data` (the input iterator's position) and `meta` (the experiment's
structure and the step). `load_variables` restores what inference needs from
a workdir alone, without building an optimizer.
"""

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'


def manager(workdir: str, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager (close it, or use it as a context)."""
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
      item_names=('state', 'data', 'meta'))


def structure(config: ml_collections.ConfigDict) -> dict:
  """What a checkpoint must agree on with the config that restores it."""
  opts = {k: v for k, v in config.model_options.items()
          if k not in ('dtype', 'bn_group_size', 'bn_momentum', 'bn_epsilon', 'scan_blocks')
          and v is not None}
  return {'model': config.model, 'model_options': opts, 'dataset': config.input.dataset}


def data_order(config, process_count: int, num_workers: int | None) -> dict:
  """What decides the meaning of a saved data position: resuming with other
  values would silently feed another sequence of batches."""
  return {'batch_size': config.input.batch_size, 'seed': config.seed,
          'process_count': process_count, 'num_workers': num_workers}


def check_matches(mngr: ocp.CheckpointManager, config, order: dict | None = None) -> int | None:
  """The latest step, failing fast if it is a checkpoint of another experiment
  (or, given `order`, of another data order: see `data_order`)."""
  step = mngr.latest_step()
  if step is None:
    return None
  try:
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  except Exception as e:  # Orbax raises many types; say what to do.
    raise ValueError(
        f'could not read the metadata of checkpoint {step} in {mngr.directory}: '
        f'{type(e).__name__}: {e}. It was left untouched; remove that step '
        'directory to resume from an earlier one, or use a fresh --workdir.') from e
  saved, wanted = meta.get('structure'), structure(config)
  if saved != wanted:
    raise ValueError(
        f'the workdir holds a checkpoint (step {step}) of {saved}, but the config '
        f'asks for {wanted}. Use a fresh --workdir, or the config it was trained with.')
  saved_order = meta.get('data_order')
  if order is not None and saved_order is not None and saved_order != order:
    changed = {k: (saved_order.get(k), v) for k, v in order.items() if saved_order.get(k) != v}
    fixes = ' '.join(f'--config.input.{k}={a}' if k in ('batch_size', 'num_workers') else
                     f'--config.seed={a}' if k == 'seed' else f'{a} processes'
                     for k, (a, _) in changed.items())
    raise ValueError(
        f'checkpoint {step} in {mngr.directory} was saved with a data order of '
        f'{saved_order}, this run has {order}: its saved data position would '
        f'mean other batches. Resume with {fixes}, or use a fresh --workdir.')
  return step


def save(mngr: ocp.CheckpointManager, step: int, state, data_state, config,
         order: dict | None = None):
  """Saves `state` and the data position as step `step` (asynchronously)."""
  meta = {'structure': structure(config), 'step': step, 'data_order': order}
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
      meta=ocp.args.JsonSave(meta)), force=True)


def _restore_error(mngr, step, e):
  return ValueError(
      f'could not restore the checkpoint of step {step} in {mngr.directory}: '
      f'{type(e).__name__}: {e}. It was left untouched; remove that step '
      'directory to resume from an earlier one, or use a fresh --workdir.')


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Restores (state, data-iterator state) of `step` onto `abstract_state`'s
  shapes and shardings (`jax.ShapeDtypeStruct`s with `.sharding`)."""
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  except Exception as e:  # Orbax raises many types; say what to do.
    raise _restore_error(mngr, step, e) from e
  return restored['state'], restored['data']


def restore_inference(mngr: ocp.CheckpointManager, step: int, abstract: dict) -> dict:
  """Restores only the fields of the saved train state named in `abstract`
  (e.g. params, batch_stats, norm): no optimizer state is read."""
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True)))
  except Exception as e:  # Orbax raises many types; say what to do.
    raise _restore_error(mngr, step, e) from e
  return restored['state']


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its `config.json`)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir!r} is not a training '
                            'workdir of this project (train into it first).')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _saved_norm_shapes(mngr: ocp.CheckpointManager, step: int) -> dict:
  """Shapes of the saved normalisation constants, from the checkpoint's metadata."""
  path = os.path.join(str(mngr.directory), str(step), 'state')
  metadata = ocp.PyTreeCheckpointer().metadata(path)
  tree = getattr(metadata, 'item_metadata', metadata)
  tree = getattr(tree, 'tree', tree)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in tree['norm'].items()}


def load_variables(workdir: str, config: ml_collections.ConfigDict | None = None, *,
                   sharding=None):
  """A trained net from a workdir alone: for evaluation, research, notebooks.

  Args:
    workdir: a training workdir (with `checkpoints/` and `config.json`).
    config: the experiment config; None reads the workdir's `config.json`.
    sharding: where to put the arrays (default: replicated on the first device).

  Returns:
    (model, {'params', 'batch_stats'}, norm {'mean', 'std'}, step) of the
    latest checkpoint.
  """
  from resnet_jax import train  # The model factory and the state's variables.
  config = config or read_config(workdir)
  model = train.create_model(config)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    raise FileNotFoundError(f'no checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}; '
                            'train first or point --workdir at a trained run.')
  with manager(workdir, create=False) as mngr:
    step = check_matches(mngr, config)
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}; '
                              'train first or point --workdir at a trained run.')
    abstract = train.abstract_variables(model)
    abstract['norm'] = _saved_norm_shapes(mngr, step)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
    restored = restore_inference(mngr, step, abstract)
  variables = {'params': restored['params'], 'batch_stats': restored['batch_stats']}
  return model, variables, restored['norm'], step
