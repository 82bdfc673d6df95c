"""The weights a fine-tuning run starts from: `--config.init_from=SOURCE`.

SOURCE is a training workdir of this project (its latest checkpoint) or a
torchvision state dict file (`.pth`, `.pt`, `.safetensors`). The new run's
freshly initialised variables are overwritten with the source's, name by
name (either scan layout: `models.unscan`/`rescan`). The one exception is the
classifier: an `fc` of another number of classes keeps its fresh
initialisation, and a line says so. Anything else that differs (another
architecture, shortcut option or stride placement) is refused before
anything is compiled. Only a fresh run reads SOURCE: a resumed run restores
its own checkpoint.
"""

import os

import flax.traverse_util
import jax
import numpy as np

from resnet_jax import (
  checkpointing,
  errors,
  experiment,
  models,
  paths,
  trained_workdir,
  workdir_files,
)
from resnet_jax.weights import torchvision

_HEAD = 'fc'  # The classifier, re-initialised when its number of classes differs.
_WEIGHT_FILES = ('.pth', '.pt', '.safetensors')


def is_weights_file(source: str) -> bool:
  return os.fspath(source).endswith(_WEIGHT_FILES)


def check(config):
  """ConfigError/MissingError, before anything is compiled or written, unless
  `config.init_from` names a readable source of the config's architecture."""
  source = config.get('init_from')
  if not source:
    return
  if is_weights_file(source):
    _check_weights_file(config, source)
  else:
    _check_workdir(config, source)


_ACCEPTED = 'give a training workdir of this project or a torchvision .pth/.pt/.safetensors file'


def _check_workdir(config, source):
  """The source workdir holds a checkpoint of the config's architecture."""
  path = paths.workdir_path(source)
  if not path.is_dir():
    what = 'not a directory' if path.exists() else 'no such file or directory'
    raise errors.MissingError(f'--config.init_from={source}: {what}; {_ACCEPTED}')
  try:
    step = checkpointing.latest_step(source)
    saved = workdir_files.read_config(source) if step is not None else None
  except errors.UserError as e:
    raise _about_source(source, e) from e
  if step is None:
    raise errors.MissingError(
      f'--config.init_from={source} holds no saved checkpoint (nothing in its '
      f'{checkpointing.CHECKPOINT_DIR}/); train it until it saves one, or {_ACCEPTED}'
    )
  mine, theirs = _architecture(config), _architecture(saved)
  if mine != theirs:
    raise errors.ConfigError(
      f'--config.init_from={source} holds {theirs}, this run builds {mine}; start '
      'from a workdir of the same architecture (only the number of classes may differ)'
    )


def _check_weights_file(config, source):
  """The source file is a torchvision ResNet state dict of the config's net."""
  if not os.path.exists(source):
    raise errors.MissingError(f'--config.init_from={source}: no such file; {_ACCEPTED}')
  state_dict = _torchvision_file(source)
  name = torchvision.infer_name(state_dict)
  if name is None:
    keys = f'keys such as {next(iter(state_dict))!r}' if state_dict else 'no tensors'
    raise errors.ConfigError(
      f'--config.init_from={source} is not a torchvision ResNet state dict (it has '
      f'{keys}, not those of {", ".join(torchvision.TORCHVISION_MODELS)}); {_ACCEPTED}'
    )
  _check_torchvision_options(config, name)
  try:  # Every key and shape, as `initialize` will read them.
    torchvision.from_torchvision(state_dict, name)
  except errors.UserError as e:
    raise _about_source(source, e) from e


def _about_source(source, e: errors.UserError) -> errors.UserError:
  """`e`, of its type, its message about the source said of the flag that named it."""
  message = str(e)
  if message.startswith(str(source)):
    return type(e)(f'--config.init_from={source}{message[len(str(source)) :]}')
  return type(e)(f'--config.init_from={source}: {message}')


def _architecture(config) -> dict:
  structure = checkpointing.structure(config)
  options = {k: v for k, v in structure['model_options'].items() if k != 'num_classes'}
  return {'model': structure['model'], 'model_options': options}


def _torchvision_file(path):
  try:
    return torchvision.load_file(path)
  except errors.UserError as e:
    raise _about_source(path, e) from e


def _check_torchvision_options(config, name):
  model = experiment.model_from_config(config)
  if name is not None and name != config.model:
    raise errors.ConfigError(
      f'--config.init_from holds torchvision {name} weights, but --config.model={config.model}'
    )
  wanted = torchvision.torchvision_model(config.model, model.num_classes)
  if (model.shortcut, model.downsample_on_3x3, model.bn_epsilon) != (
    wanted.shortcut,
    wanted.downsample_on_3x3,
    wanted.bn_epsilon,
  ):
    raise errors.ConfigError(
      f'torchvision {config.model} weights need {torchvision.evaluate_flags(config.model)} '
      f'(this config has shortcut={model.shortcut!r}, '
      f'downsample_on_3x3={model.downsample_on_3x3}); add those flags'
    )


def source_variables(source: str) -> tuple[dict, str]:
  """({'params', 'batch_stats'} as host arrays, a description) of SOURCE."""
  if is_weights_file(source):
    _, variables = torchvision.from_torchvision(_torchvision_file(source))
    return variables, f'torchvision weights {source}'
  loaded = trained_workdir.load_workdir(source)
  return jax.device_get(loaded.variables), f'{source} (step {loaded.step})'


def merge(target: dict, source: dict) -> tuple[dict, list[str]]:
  """`target` variables with every leaf replaced by the source's of the same
  name, except a classifier of another shape (kept).

  Returns:
    (variables, names of the target leaves kept at their initialisation).

  Raises:
    ConfigError: a leaf missing from either side, or of another shape
      outside the classifier.
  """
  if models.is_scanned(source) != models.is_scanned(target):
    source = models.rescan(source) if models.is_scanned(target) else models.unscan(source)
  flat_target = flax.traverse_util.flatten_dict(target, sep='/')
  flat_source = flax.traverse_util.flatten_dict(source, sep='/')
  extra = sorted(set(flat_source) - set(flat_target))
  missing = sorted(set(flat_target) - set(flat_source))
  if extra or missing:
    name, side = (extra[0], 'the source has') if extra else (missing[0], 'the source lacks')
    raise errors.ConfigError(
      f'init_from: {side} {name}, so it is another architecture; start from weights of '
      'the same network'
    )
  out, kept = {}, []
  for name, value in flat_target.items():
    new = flat_source[name]
    if np.shape(new) == np.shape(value):
      out[name] = np.asarray(new, np.asarray(value).dtype)
    elif name.split('/')[1] == _HEAD:
      out[name], kept = value, [*kept, name]
    else:
      raise errors.ConfigError(
        f'init_from: {name} has shape {np.shape(new)} in the source, {np.shape(value)} here'
      )
  return flax.traverse_util.unflatten_dict(out, sep='/'), kept


def initialize(state, config, sharding):
  """`state` (a fresh train state) with the source's params and batch_stats;
  prints one line of what was loaded (and which head was re-initialised)."""
  source, description = source_variables(config.init_from)
  target = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  variables, kept = merge(target, source)
  variables = jax.device_put(variables, sharding)
  if jax.process_index() == 0:
    head = ''
    if kept:
      classes = np.shape(target['params'][_HEAD]['bias'])[0]
      was = np.shape(jax.tree.leaves(source['params'][_HEAD])[0])[-1]
      head = f'; its {was}-class fc does not fit {classes} classes: fc re-initialised'
    print(f'Initialised from {description}{head}', flush=True)
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
