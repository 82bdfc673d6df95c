"""A trained net from a workdir alone, no optimizer: for evaluation, prediction, research."""

import typing

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from resnet_jax import (
  checkpointing,
  data,
  errors,
  experiment,
  models,
  orbax_quiet,
  paths,
  workdir_files,
)


class LoadedWorkdir(typing.NamedTuple):
  """A trained net from a workdir: what inference needs, and where it came from."""

  model: models.ResNet
  variables: dict  # {'params', 'batch_stats'}
  norm: dict  # {'mean', 'std'} of the input normalisation, float32, 0..255 scale.
  step: int
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...] | None  # Label -> name; None if unknown.


def load_workdir(
  workdir, config: ml_collections.ConfigDict | None = None, *, sharding=None, ema: bool = False
) -> LoadedWorkdir:
  """A trained net from a workdir alone: for evaluation, prediction, research.

  Args:
    workdir: a training workdir (with `checkpoints/`), local or `gs://`.
    config: the experiment config; None reads the workdir's (`workdir_files.read_config`).
    sharding: where to put the arrays (default: replicated on the first device).
    ema: the weights' moving average (of a run trained with `config.ema`)
      instead of the raw weights.

  Returns:
    The latest checkpoint's `LoadedWorkdir`: model, variables, norm, step,
    config and class names (from the checkpoint, else the dataset's metadata).
  """
  checkpointing.require_checkpoints(workdir)
  config = config or workdir_files.read_config(workdir)
  model = experiment.model_from_config(config)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with (
    orbax_quiet.without_missing_metadata_warnings(),
    checkpointing.manager(workdir, create=False) as mngr,
  ):
    step, meta = checkpointing.latest_meta(mngr)  # One read: the checks and the class names.
    if step is None:
      checkpointing.require_checkpoints(workdir, any_step=True)
    checkpointing.check_meta(mngr, step, meta, config)
    names = meta.get('class_names')
    abstract = models.abstract_variables(model)
    if ema:
      _require_average(config, workdir)
      abstract = {'ema': abstract}
    abstract['norm'] = _saved_norm_shapes(mngr, step)
    abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract
    )
    restored = restore_inference(mngr, step, abstract)
  weights = restored['ema'] if ema else restored
  variables = {'params': weights['params'], 'batch_stats': weights['batch_stats']}
  return LoadedWorkdir(
    model, variables, restored['norm'], step, config, _class_names(names, config, model)
  )


def _require_average(config, workdir):
  if not config.ema.decay:
    raise errors.ConfigError(
      f'{workdir} was trained without a moving average of its weights (ema.decay=0): '
      'score its raw weights (leave --config.eval.ema unset)'
    )


def save_for_inference(workdir, config, state: dict, class_names=None):
  """Makes a fresh `workdir` hold `state` (params, batch_stats, norm, step) as
  step 0 with its `meta` and `config.json`: enough for `load_workdir` and
  `--mode=evaluate`, not for resuming training (no optimizer state, no data
  position)."""
  path = paths.workdir_path(workdir)
  if (path / workdir_files.CONFIG_FILE).exists() or (path / checkpointing.CHECKPOINT_DIR).exists():
    raise errors.WorkdirError(
      f'{path} already holds a config or checkpoints; use a fresh --workdir'
    )
  with checkpointing.manager(workdir) as mngr:
    # Orbax saves a subset of the manager's items: no `data` (no input position).
    mngr.save(
      0,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(checkpointing.meta_item(config, 0, None, class_names)),
      ),
      force=True,
    )
    mngr.wait_until_finished()
  workdir_files.record_config(workdir, config, 0)


def restore_inference(mngr: ocp.CheckpointManager, step: int, abstract: dict) -> dict:
  """Restores only the fields of the saved train state named in `abstract`
  (e.g. params, batch_stats, norm): no optimizer state is read."""
  try:
    restored = mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          abstract,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True,
        )
      ),
    )
  except Exception as e:  # Orbax raises many types; one clear line instead.
    raise errors.CheckpointError(
      f'{checkpointing.unreadable(mngr, step, e)}. {checkpointing.LEFT_UNTOUCHED}'
    ) from e
  return restored['state']


def _saved_norm_shapes(mngr: ocp.CheckpointManager, step: int) -> dict:
  """Shapes of the saved normalisation constants, from the checkpoint's metadata."""
  checkpointing.require_state(mngr, step)
  metadata = ocp.PyTreeCheckpointer().metadata(epath.Path(mngr.directory) / str(step) / 'state')
  tree = getattr(metadata, 'item_metadata', metadata)
  tree = getattr(tree, 'tree', tree)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in tree['norm'].items()}


def _class_names(saved, config, model) -> tuple[str, ...] | None:
  """The checkpoint's class names, else its dataset's (older checkpoints)."""
  if saved:
    return tuple(saved)
  try:
    names = data.dataset_info(config.input).class_names
  except errors.UserError:  # The dataset is not known on this machine.
    return None
  return names if names and len(names) == model.num_classes else None
