r"""Torchvision ResNet weights <-> this project's Flax variables and workdirs.

    # A torchvision state dict -> a workdir that `--mode=evaluate` runs on:
    python -m resnet_jax.weights.torchvision --model=resnet50 \
        --torch_file=resnet50.pth --workdir=DIR
    # A workdir's latest checkpoint -> a torchvision state dict:
    python -m resnet_jax.weights.torchvision --export --workdir=DIR \
        --torch_file=out.safetensors

torchvision's resnet18/34/50/101/152 are this project's nets of the same name
with option-B shortcuts and, for the bottleneck nets, the stride on the 3x3
convolution ("ResNet v1.5", `downsample_on_3x3=True`): same symmetric padding
((k-1)//2 at every stride), same 3x3/2 max pool with padding 1, BatchNorm
epsilon 1e-5, global average pool, fc. So the weights map one to one:

    torchvision (NCHW, OIHW)               Flax (NHWC, HWIO)
    conv1.weight (O, I, 7, 7)              params/conv_init/kernel (7, 7, I, O)
    bn1.weight, bn1.bias                   params/bn_init/scale, bias
    bn1.running_mean, bn1.running_var      batch_stats/bn_init/mean, var
    layerI.0.convK, layerI.0.bnK           stageI_block1/convK, bnK
    layerI.J.convK, layerI.J.bnK (J >= 1)  stageI_rest/convK, bnK: row J-1 of
                                           the stacked (nn.scan) parameters
                                           (stageI_block{J+1} without scan)
    layerI.0.downsample.0 / .1             stageI_block1/shortcut/conv / bn
    fc.weight (out, in), fc.bias           params/fc/kernel (in, out), bias

`num_batches_tracked` (BN's step counter, unused in eval mode) is accepted and
ignored on import and written as int64 zeros on export. Inputs: torchvision
normalises x/255 with mean (0.485, 0.456, 0.406) and std (0.229, 0.224,
0.225); an imported workdir stores `imagenet.MEAN_RGB`/`STDDEV_RGB`, the
same constants on the 0..255 scale, so `evaluation` feeds it what torchvision
would.

Torch is needed only to read or write `.pth`/`.pt` files (or to pass torch
tensors); `.safetensors` files are read and written with `safetensors.numpy`.
Torch is imported lazily, inside the functions that need it, and never by the
training code. Install with `pip install -e ".[torch]"`.
"""

import os
import re
import sys

import flax.traverse_util
import jax
import numpy as np
from absl import app, flags, logging

from resnet_jax import cli, config_lib, errors, experiment, models, trained_workdir, workdir_files
from resnet_jax.data import imagenet

TORCHVISION_MODELS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')

FLAGS = flags.FLAGS
# Defined only when this module runs as the command line: imported as a
# library (by the training loop's init_from, by notebooks), it leaves the flags
# to the program that imports it, which may have its own --workdir.
if __name__ == '__main__':
  flags.DEFINE_string(
    'model',
    None,
    f'One of {", ".join(TORCHVISION_MODELS)}; unset: '
    'inferred from the state dict (import) or the workdir (export).',
  )
  flags.DEFINE_string(
    'torch_file',
    None,
    'The state dict file, .pth/.pt (needs torch) '
    'or .safetensors: read on import, written with --export.',
  )
  flags.DEFINE_string(
    'workdir',
    None,
    'The workdir: written on import (must be fresh), its latest checkpoint read with --export.',
  )
  flags.DEFINE_bool(
    'export',
    False,
    'Export the workdir to --torch_file instead of importing --torch_file into the workdir.',
  )
  flags.mark_flags_as_required(['torch_file', 'workdir'])
TORCHVISION_BN_EPSILON = 1e-5  # nn.BatchNorm2d's default, used by torchvision.
_TORCH_SUFFIXES = ('.pth', '.pt')
_SAFETENSORS_SUFFIX = '.safetensors'

# torchvision BN field -> (Flax collection, Flax leaf).
_BN_FIELDS = (
  ('weight', 'params', 'scale'),
  ('bias', 'params', 'bias'),
  ('running_mean', 'batch_stats', 'mean'),
  ('running_var', 'batch_stats', 'var'),
)


class WeightsError(errors.UserError, ValueError):
  """A state dict or checkpoint that is not the torchvision net asked for."""


def _check_name(name):
  if name not in TORCHVISION_MODELS:
    raise WeightsError(
      f'model {name!r} has no torchvision counterpart; use one of {", ".join(TORCHVISION_MODELS)}'
    )


def _is_bottleneck(name: str) -> bool:
  return models.MODELS[name]['block_cls'] is models.BottleneckBlock


def key_map(name: str, scan_blocks: bool = True) -> dict:
  """torchvision key -> (Flax path, row, kind), in torchvision's state-dict order.

  The Flax path is (collection, module..., leaf); row is the index into the
  stacked parameters of a scanned stage (None elsewhere); kind is 'conv',
  'fc' or 'vector' (the layout change). `num_batches_tracked` is left out.
  """
  _check_name(name)
  spec = models.MODELS[name]
  bottleneck = _is_bottleneck(name)
  out = {}

  def conv(key, module, row):
    out[f'{key}.weight'] = (('params',) + module + ('kernel',), row, 'conv')

  def bn(key, module, row):
    for field, collection, leaf in _BN_FIELDS:
      out[f'{key}.{field}'] = ((collection,) + module + (leaf,), row, 'vector')

  conv('conv1', ('conv_init',), None)
  bn('bn1', ('bn_init',), None)
  for i, num_blocks in enumerate(spec['stage_sizes'], 1):
    for j in range(num_blocks):
      if j == 0:
        module, row = (f'stage{i}_block1',), None
      elif scan_blocks:
        module, row = (f'stage{i}_rest',), j - 1
      else:
        module, row = (f'stage{i}_block{j + 1}',), None
      prefix = f'layer{i}.{j}'
      for k in range(1, 4 if bottleneck else 3):
        conv(f'{prefix}.conv{k}', module + (f'conv{k}',), row)
        bn(f'{prefix}.bn{k}', module + (f'bn{k}',), row)
      # Option B: a projection where the shape changes (stride 2, or the
      # 64 -> 256 channels of a bottleneck net's first block).
      if j == 0 and (i > 1 or bottleneck):
        conv(f'{prefix}.downsample.0', module + ('shortcut', 'conv'), row)
        bn(f'{prefix}.downsample.1', module + ('shortcut', 'bn'), row)
  out['fc.weight'] = (('params', 'fc', 'kernel'), None, 'fc')
  out['fc.bias'] = (('params', 'fc', 'bias'), None, 'vector')
  return out


def _to_flax(kind, a):
  if kind == 'conv':
    return a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return a.T if kind == 'fc' else a  # (out, in) -> (in, out)


def _to_torch(kind, a):
  if kind == 'conv':
    return a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  return a.T if kind == 'fc' else a


def _torch_shape(kind, flax_shape):
  return tuple(_to_torch(kind, np.empty(flax_shape, np.uint8)).shape)


def _as_numpy(value, key=None) -> np.ndarray:
  """A numpy array of `value` (a numpy/jax array or a torch tensor)."""
  if type(value).__module__.split('.')[0] == 'torch':  # Tested without importing torch.
    import torch

    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      if value.dtype == torch.bfloat16:  # numpy has no bfloat16.
        value = value.float()
      return value.numpy()
  array = np.asarray(value)
  if array.dtype == object:
    raise WeightsError(f'{key!r} is a {type(value).__name__}, not an array or tensor')
  return array


def infer_name(state_dict) -> str | None:
  """The torchvision ResNet a state dict's keys describe (None if none)."""
  blocks = {}
  for key in state_dict:
    m = re.match(r'layer(\d+)\.(\d+)\.', key)
    if m:
      blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
  sizes = tuple(blocks.get(i, 0) for i in range(1, 5))
  bottleneck = any('.conv3.' in key for key in state_dict)
  for name in TORCHVISION_MODELS:
    if tuple(models.MODELS[name]['stage_sizes']) == sizes and _is_bottleneck(name) == bottleneck:
      return name
  return None


def _abstract(model) -> dict:
  """Flat {path: ShapeDtypeStruct} of the model's params and batch_stats."""
  return flax.traverse_util.flatten_dict(models.abstract_variables(model))


def _check_shapes(flat: dict, wanted: dict, what: str):
  """WeightsError unless `flat` has exactly the paths and shapes of `wanted`."""
  for path, s in wanted.items():
    got = tuple(np.shape(flat[path])) if path in flat else 'nothing'
    if got != s.shape:
      raise WeightsError(
        f'{"/".join(path)}: {what} needs shape {s.shape}, the variables '
        f'have {got} (option B shortcuts; scanned stages stack blocks 2..n)'
      )
  extra = [path for path in flat if path not in wanted]
  if extra:
    raise WeightsError(f'{"/".join(extra[0])} is not a variable of {what}')


def torchvision_model(
  name: str, num_classes: int = 1000, scan_blocks: bool = True
) -> models.ResNet:
  """The Flax twin of torchvision's `name` (v1.5 bottlenecks, BN eps 1e-5)."""
  _check_name(name)
  model = models.create_model(
    name, downsample_on_3x3=_is_bottleneck(name), num_classes=num_classes, scan_blocks=scan_blocks
  )
  if model.bn_epsilon != TORCHVISION_BN_EPSILON or model.shortcut != 'B':
    raise WeightsError(
      f'{name} has bn_epsilon={model.bn_epsilon}, shortcut='
      f'{model.shortcut!r}; torchvision uses 1e-5 and option B'
    )
  return model


def from_torchvision(state_dict, name: str | None = None):
  """A torchvision ResNet state dict as this project's model and variables.

  Args:
    state_dict: {key: tensor or array} of torchvision's resnet18/34/50/101/152
      (e.g. `torchvision.models.resnet50(weights=...).state_dict()` or
      `load_file(path)`); values are torch tensors or numpy/jax arrays.
    name: the architecture; None infers it from the keys.

  Returns:
    (model, {'params', 'batch_stats'}) with float32 numpy leaves; the model is
    `models.create_model(name, downsample_on_3x3=<bottleneck>)` with the
    default `scan_blocks=True` (blocks 2..n of a stage stacked) and the number
    of classes of `fc.weight`.

  Raises:
    WeightsError (a ValueError), one line naming the first unexpected,
    missing or misshaped key.
  """
  name, hint = _architecture(state_dict, name)
  fc = state_dict.get('fc.weight')
  num_classes = int(np.shape(fc)[0]) if fc is not None and np.ndim(fc) == 2 else 1000
  model = torchvision_model(name, num_classes)
  shapes = _abstract(model)
  keys = key_map(name)
  if {path for path, _, _ in keys.values()} != set(shapes):  # A bug here, not bad input.
    raise AssertionError(f'key_map({name!r}) does not cover the Flax variables')
  flat = _flax_leaves(state_dict, name, keys, shapes, hint)
  missing = [key for key in keys if key not in state_dict]
  if missing:
    more = f' and {len(missing) - 1} more' if len(missing) > 1 else ''
    raise WeightsError(f'missing key {missing[0]!r}{more} in a torchvision {name} state dict{hint}')
  return model, flax.traverse_util.unflatten_dict(flat)


def _architecture(state_dict, name: str | None) -> tuple[str, str]:
  """(name, hint): the net `state_dict` is read as (`name`, or inferred from
  its keys), and what its errors add when the keys are another net's."""
  guess = infer_name(state_dict)
  name = name or guess
  if name is None:
    raise WeightsError(
      'the state dict is not of a torchvision ResNet '
      f'({", ".join(TORCHVISION_MODELS)}); pass its name'
    )
  _check_name(name)
  return name, f' (its keys are those of {guess})' if guess and guess != name else ''


def _flax_leaves(state_dict, name: str, keys: dict, shapes: dict, hint: str) -> dict:
  """{Flax path: float32 array} of the values of `state_dict`, in Flax layouts
  (stacked rows for scanned blocks); WeightsError on an unexpected key or shape."""
  flat = {path: np.zeros(s.shape, np.float32) for path, s in shapes.items()}
  bn_prefixes = {key[: -len('.running_mean')] for key in keys if key.endswith('.running_mean')}
  for key, value in state_dict.items():
    if key not in keys:
      prefix, _, field = key.rpartition('.')
      if field == 'num_batches_tracked' and prefix in bn_prefixes:
        continue
      if key.startswith('module.'):
        hint = hint or " (saved from a DataParallel wrapper: strip the 'module.' prefixes)"
      raise WeightsError(f'unexpected key {key!r} in a torchvision {name} state dict{hint}')
    path, row, kind = keys[key]
    array = _as_numpy(value, key)
    target = shapes[path].shape if row is None else shapes[path].shape[1:]
    if tuple(array.shape) != _torch_shape(kind, target):
      raise WeightsError(
        f'{key!r} has shape {tuple(array.shape)}, torchvision {name} '
        f'has {_torch_shape(kind, target)}{hint}'
      )
    array = np.ascontiguousarray(_to_flax(kind, array.astype(np.float32)))
    if row is None:
      flat[path] = array
    else:
      flat[path][row] = array
  return flat


def to_torchvision(variables, name: str) -> dict:
  """{'params', 'batch_stats'} of this project's `name` as a torchvision state dict.

  The inverse of `from_torchvision` (exact): float32 numpy arrays in
  torchvision's layouts and key order, `num_batches_tracked` int64 zeros.
  Scanned (`stageI_rest`) or unscanned (`stageI_blockJ`) variables both work.
  Only the shapes can be checked: a bottleneck net must have been built with
  `downsample_on_3x3=True` to compute what torchvision's does
  (`export_workdir` checks that).
  """
  _check_name(name)
  flat = flax.traverse_util.flatten_dict(
    {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  )
  scan = any(path[1].endswith('_rest') for path in flat)
  fc = flat.get(('params', 'fc', 'kernel'))
  num_classes = int(np.shape(fc)[-1]) if fc is not None else 1000
  _check_shapes(
    flat, _abstract(torchvision_model(name, num_classes, scan_blocks=scan)), f'torchvision {name}'
  )

  out = {}
  for key, (path, row, kind) in key_map(name, scan_blocks=scan).items():
    array = np.asarray(jax.device_get(flat[path]), np.float32)
    array = array if row is None else array[row]
    out[key] = np.ascontiguousarray(_to_torch(kind, array))
    if key.endswith('.running_var'):
      out[key[: -len('running_var')] + 'num_batches_tracked'] = np.zeros((), np.int64)
  return out


def _check_suffix(path) -> str:
  path = os.fspath(path)
  if not path.endswith((_SAFETENSORS_SUFFIX,) + _TORCH_SUFFIXES):
    raise WeightsError(f'{path}: expected a .pth, .pt or .safetensors file')
  return path


def _import_torch(path):
  """The torch module; MissingError, with the ways out, where it is not installed."""
  try:
    import torch
  except ImportError as e:
    raise errors.MissingError(
      f'{path}: a .pth/.pt file needs torch, which is not installed; install the torch '
      'extra (pip install -e ".[torch]"), or, where torch is installed, convert it to '
      f'.safetensors: python -m resnet_jax.weights.torchvision --torch_file={path} '
      '--workdir=DIR, then python -m resnet_jax.weights.torchvision --export '
      '--workdir=DIR --torch_file=OUT.safetensors'
    ) from e
  return torch


def _import_safetensors(path):
  """safetensors.numpy; MissingError, with the fix, where it is not installed."""
  try:
    import safetensors.numpy
  except ImportError as e:
    raise errors.MissingError(
      f'{path}: a .safetensors file needs the safetensors package, which is not '
      'installed; install it (pip install safetensors, or the torch extra: '
      'pip install -e ".[torch]")'
    ) from e
  return safetensors.numpy


def load_file(path) -> dict:
  """A state dict from a `.pth`/`.pt` file (needs torch) or a `.safetensors`
  file (safetensors.numpy, no torch), as {key: numpy array}."""
  path = _check_suffix(path)
  if not os.path.exists(path):
    raise errors.MissingError(f'{path} does not exist')
  if path.endswith(_SAFETENSORS_SUFFIX):
    load = _import_safetensors(path).load_file
    try:
      return dict(load(path))
    except Exception as e:  # A truncated or garbage file: its header does not parse.
      raise WeightsError(
        f'{path} is not a readable .safetensors file ({errors.first_line(e)})'
      ) from e
  torch = _import_torch(path)
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # Pickled objects other than tensors, corrupt files.
    raise WeightsError(f'{path} cannot be read as a state dict ({errors.first_line(e)})') from e
  if not isinstance(loaded, dict) or not all(
    isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
  ):
    raise WeightsError(
      f'{path} is not a state dict (a mapping of names to tensors); '
      "save the model's state_dict() alone"
    )
  return {key: _as_numpy(value, key) for key, value in loaded.items()}


def save_file(state_dict, path):
  """Writes {key: array or tensor} as `.safetensors` (no torch) or `.pth`/`.pt`."""
  path = _check_suffix(path)
  # np.array, not ascontiguousarray (which makes 0-d arrays 1-d): C-ordered,
  # writable copies (torch.from_numpy warns about read-only arrays).
  arrays = {key: np.array(_as_numpy(value, key), order='C') for key, value in state_dict.items()}
  if path.endswith(_SAFETENSORS_SUFFIX):
    _import_safetensors(path).save_file(arrays, path)
  else:
    torch = _import_torch(path)
    torch.save({key: torch.from_numpy(a) for key, a in arrays.items()}, path)


def imagenet_config(name: str, num_classes: int = 1000):
  """The ImageNet config of torchvision's `name`: option B, v1.5 bottlenecks,
  per-channel mean/std input normalisation. Its structure is that of
  `configs/imagenet_rN.py` with `evaluate_flags(name)`."""
  _check_name(name)
  config = config_lib.imagenet(name)
  # Explicit, as in configs/imagenet_r*.py: a saved structure names the options set.
  config.model_options.shortcut = 'B'
  if _is_bottleneck(name):
    config.model_options.downsample_on_3x3 = True
  if num_classes != 1000:
    config.model_options.num_classes = num_classes
  config.input.normalization = 'channel_mean_std'
  return config


def evaluate_flags(name: str) -> str:
  """The `main` flags that make `configs/imagenet_rN.py` agree with an import."""
  out = '--config.model_options.shortcut=B'
  if _is_bottleneck(name):
    out += ' --config.model_options.downsample_on_3x3=True'
  return out


def write_workdir(model_name: str, variables, workdir):
  """Makes `workdir` a workdir of this project holding `variables` as step 0.

  It gets `config.json` (`imagenet_config`) and an Orbax checkpoint with the
  `state` items that evaluation reads (params, batch_stats, norm = MEAN_RGB /
  STDDEV_RGB, step) and `meta`; so `trained_workdir.load_workdir(workdir)`
  and `main --mode=evaluate` work. It holds no optimizer state or data
  position: it is for evaluation, not for resuming training.

  Returns:
    The config written.
  """
  bias = variables['params']['fc']['bias']
  config = imagenet_config(model_name, int(np.shape(bias)[0]))
  flat = flax.traverse_util.flatten_dict(
    {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  )
  _check_shapes(flat, _abstract(experiment.model_from_config(config)), model_name)

  tree = flax.traverse_util.unflatten_dict(
    {p: np.asarray(jax.device_get(a), np.float32) for p, a in flat.items()}
  )
  state = {
    'params': tree['params'],
    'batch_stats': tree['batch_stats'],
    'norm': {
      'mean': imagenet.MEAN_RGB.astype(np.float32),
      'std': imagenet.STDDEV_RGB.astype(np.float32),
    },
    'step': np.zeros((), np.int32),
  }
  trained_workdir.save_for_inference(workdir, config, state)
  return config


def export_workdir(workdir, path, name: str | None = None) -> tuple[str, int]:
  """Writes the workdir's latest checkpoint as a torchvision state dict file.

  Refuses nets that would compute something else in torchvision: another
  shortcut option, BN epsilon, or (ResNet-50/101/152) the stride on the first
  1x1 (the paper's models) instead of the 3x3. Warns when the checkpoint's
  input normalisation is not torchvision's.

  Returns:
    (model name, step).
  """
  path = _check_suffix(path)
  config = workdir_files.read_config(workdir)
  if name is not None and name != config.model:
    raise WeightsError(f'{workdir} holds a {config.model}, not a {name}')
  name = config.model
  _check_name(name)
  options = config.model_options
  if options.get('shortcut') not in (None, 'B'):
    raise WeightsError(
      f'{workdir} uses shortcut option {options.shortcut}; torchvision has option B only'
    )
  if options.get('bn_epsilon') not in (None, TORCHVISION_BN_EPSILON):
    raise WeightsError(
      f'{workdir} uses bn_epsilon={options.bn_epsilon}; torchvision uses {TORCHVISION_BN_EPSILON}'
    )
  if _is_bottleneck(name) and not options.get('downsample_on_3x3'):
    raise WeightsError(
      f'{workdir} strides the first 1x1 of its bottlenecks (the '
      "paper's ResNet v1); torchvision's strides the 3x3 (v1.5), so "
      'the weights would compute something else there'
    )
  _, variables, norm, step, _, _ = trained_workdir.load_workdir(workdir, config)
  mean, std = (np.asarray(jax.device_get(norm[k])) for k in ('mean', 'std'))
  if not (
    mean.shape == std.shape == (3,)
    and np.allclose(mean, imagenet.MEAN_RGB)
    and np.allclose(std, imagenet.STDDEV_RGB)
  ):
    print(
      f'warning: {workdir} normalises its input with mean of shape {mean.shape} '
      f"and std {std.tolist()} (0..255 scale), not torchvision's ImageNet "
      'mean/std: feed the exported net (255 * x - mean) / std.',
      file=sys.stderr,
    )
  save_file(to_torchvision(variables, name), path)
  return name, step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO.
  if FLAGS.export:
    name, step = export_workdir(FLAGS.workdir, FLAGS.torch_file, FLAGS.model)
    print(
      f'wrote {FLAGS.torch_file}: torchvision {name} from step {step} of {FLAGS.workdir}',
      flush=True,
    )
  else:
    state_dict = load_file(FLAGS.torch_file)
    model, variables = from_torchvision(state_dict, FLAGS.model)
    name = FLAGS.model or infer_name(state_dict)
    write_workdir(name, variables, FLAGS.workdir)
    print(
      f'wrote {FLAGS.workdir}: {name} ({model.num_classes} classes) from '
      f'{FLAGS.torch_file}; evaluate it with: python -m resnet_jax.main '
      f'--config=configs/imagenet_r{name[len("resnet") :]}.py {evaluate_flags(name)} '
      f'--workdir={FLAGS.workdir} --mode=evaluate',
      flush=True,
    )


if __name__ == '__main__':
  cli.run(main)
