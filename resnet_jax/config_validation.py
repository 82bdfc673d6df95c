"""Checks of an experiment config, before anything is compiled or read.

`validate` (training) and `validate_for_evaluation` raise `errors.ConfigError`
with one line that names the bad field and its fix; the allowed values of the
fields that take names are listed here.
"""

import math
import re

import flax.traverse_util
import ml_collections

from resnet_jax import data, errors, models
from resnet_jax.config_lib import family, model_family

PROTOCOLS = ('center', 'ten_crop', 'multi_scale', 'ensemble')
# Compute dtypes ('auto': bfloat16 on GPU/TPU, float32 on CPU); params stay float32.
DTYPES = ('auto', None, 'float32', 'bfloat16', 'float16')
SCHEDULES = ('piecewise', 'plateau', 'cosine', 'polynomial')
OPTIMIZERS = ('sgd', 'nesterov', 'lars', 'adamw')
NORMALIZATIONS = ('channel_mean_std', 'pixel_mean')
TRAIN_CROPS = data.imagenet.TRAIN_CROPS


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1):
  """Raises ConfigError naming the problem and its fix; returns None if fine."""

  def fail(msg):
    raise errors.ConfigError(f'bad config: {msg}')

  info = _validate_model_and_dataset(config, fail)
  _validate_batch(config, num_devices, num_processes, fail)
  _validate_schedule(config, fail)
  _validate_optimizer(config, fail)
  _validate_regularizers(config, fail)
  _validate_finetuning(config, fail)
  for key in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if config[key] <= 0:
      fail(f'{key}={config[key]} must be positive')
  _validate_steps_per_dispatch(config, fail)
  if config.input.get('train_split') and config.input.holdout_validation:
    fail(
      f'input.train_split={config.input.train_split!r} and holdout_validation both '
      'choose the training examples; set one of them'
    )
  num_train = info.num_train or float('inf')  # Unknown until prepared: checked when read.
  if config.input.holdout_validation and not 0 < config.input.num_holdout < num_train:
    fail(
      f'input.num_holdout={config.input.num_holdout} must be between 0 and '
      f'the training-set size {info.num_train}'
    )
  _validate_eval(config, info, fail)
  if info.family == 'imagenet':
    _validate_imagenet_input(config, fail)


def validate_for_evaluation(config: ml_collections.ConfigDict, num_devices: int):
  """`validate` of what evaluation reads: the model, the dataset and the
  evaluation fields (not the training schedule, batch or optimizer)."""

  def fail(msg):
    raise errors.ConfigError(f'bad config: {msg}')

  info = _validate_model_and_dataset(config, fail)
  if config.input.eval_batch_size <= 0:
    fail(f'input.eval_batch_size={config.input.eval_batch_size} must be positive')
  _validate_eval(config, info, fail)


def _validate_model_and_dataset(config, fail) -> data.DatasetInfo:
  if config.model not in models.MODELS:
    fail(f'unknown model {config.model!r}; set --config.model to one of {", ".join(models.MODELS)}')
  # The dtype is the config's ('auto' among its names), checked below.
  options = {k: v for k, v in _set_options(config).items() if k != 'dtype'}
  try:
    models.check_options(options, prefix='model_options.')
  except errors.ConfigError as e:
    fail(str(e))
  info = data.dataset_info(config.input)
  config_family = family(config)
  if info.family != config_family:
    fail(
      f'{config.input.dataset} is served by the {info.family!r} input family but this is '
      f"a {config_family} config (it lacks that family's input fields); start from a "
      f'configs/{"imagenet" if info.family == "imagenet" else "cifar10"}_*.py config'
    )
  if config_family == 'cifar' and not (info.image_shape and all(info.image_shape)):
    fail(
      f'{config.input.dataset} has images of varying size, but the cifar family holds '
      'fixed-size images in memory; use an ImageNet config (configs/imagenet_*.py)'
    )
  dtype = config.model_options.get('dtype')
  if dtype not in DTYPES:
    fail(f'model_options.dtype={dtype!r}; set it to one of {", ".join(map(str, DTYPES))}')
  classes = config.model_options.get('num_classes')
  if classes is not None and (not isinstance(classes, int) or classes < info.num_classes):
    fail(
      f'model_options.num_classes={classes} is fewer than the {info.num_classes} classes '
      f'of {config.input.dataset} (its labels would fall outside the output); '
      f'leave it unset (None) or set it to at least {info.num_classes}'
    )
  if model_family(config.model) != info.family:
    fail(
      f'model {config.model!r} is not meant for {config.input.dataset!r}; '
      'use the resnet*/plain* nets on ImageNet datasets and cifar_* nets on CIFAR'
    )
  return info


def _set_options(config) -> dict:
  """The model options a config sets (None keeps the model's default); a
  field that is no option is kept, so that it is reported."""
  return {k: v for k, v in config.model_options.items() if v is not None or k not in models.OPTIONS}


def _validate_batch(config, num_devices: int, num_processes: int, fail):
  size = config.input.batch_size
  if size <= 0 or size % num_devices:
    fail(
      f'input.batch_size={size} is not a positive multiple of the {num_devices} '
      f'devices; set --config.input.batch_size to a multiple of {num_devices}'
    )
  if size % num_processes:
    fail(f'input.batch_size={size} is not divisible by the {num_processes} processes')
  # Evaluation rounds its batch to a multiple of the devices (masking the rest).
  if config.input.eval_batch_size <= 0:
    fail(
      f'input.eval_batch_size={config.input.eval_batch_size} must be positive; '
      'set --config.input.eval_batch_size'
    )
  accumulation = config.get('gradient_accumulation_steps', 1)
  if not isinstance(accumulation, int) or accumulation < 1:
    fail(f'gradient_accumulation_steps={accumulation!r} must be a positive integer')
  if size % (num_devices * accumulation):
    fail(
      f'input.batch_size={size} does not split into {accumulation} micro-batches (gradient_'
      f'accumulation_steps) spread over {num_devices} devices; make it a multiple of '
      f'{num_devices * accumulation}'
    )
  # BN sees one micro-batch at a time: its groups must fit that.
  size //= accumulation
  group = config.model_options.get('bn_group_size')  # Positive, if set (models.check_options).
  per_device = size // num_devices
  # Groups inside one device, or over whole devices, cost XLA only all-reduces
  # of per-channel sums; a group straddling part of a device makes it
  # all-gather the activations themselves (checked in the compiled HLO).
  if group is not None and not (
    per_device % group == 0 or (group % per_device == 0 and size % group == 0)
  ):
    fits = sorted(
      {g for g in range(1, per_device + 1) if per_device % g == 0}
      | {per_device * k for k in range(1, num_devices + 1) if num_devices % k == 0}
    )
    fail(
      f'model_options.bn_group_size={group} does not fit the batch of {size} that BN sees '
      f'on {num_devices} devices (per-device batch {per_device}): a BN group must '
      f'lie within one device or span whole devices; set it to one of '
      f'{", ".join(map(str, fits))}'
    )


def _validate_schedule(config, fail):
  s = config.schedule
  if s.total_steps <= 0:
    fail(f'schedule.total_steps={s.total_steps} must be positive')
  if s.kind not in SCHEDULES:
    fail(f'schedule.kind={s.kind!r}; set it to one of {SCHEDULES}')
  bounds = tuple(s.boundaries)
  if s.kind == 'piecewise':
    if any(not isinstance(b, int) or b <= 0 for b in bounds) or any(
      a >= b for a, b in zip(bounds, bounds[1:])
    ):
      fail(f'schedule.boundaries={bounds} must be positive integers (steps), strictly increasing')
    if bounds and bounds[-1] >= s.total_steps:
      fail(
        f'schedule.boundaries={bounds} reach past the end of training '
        f'(total_steps={s.total_steps}); lower them or raise total_steps'
      )
  elif s.kind == 'plateau' and not config.input.holdout_validation:
    fail(
      "schedule.kind='plateau' watches the held-out error; set "
      '--config.input.holdout_validation=True or use '
      '--config.schedule.kind=piecewise'
    )
  if s.plateau_patience < 1 or s.plateau_max_decays < 0 or s.plateau_rtol < 0:
    fail('schedule.plateau_patience must be >= 1, plateau_max_decays and plateau_rtol >= 0')
  if s.reference_batch_size is not None and s.reference_batch_size <= 0:
    fail(f'schedule.reference_batch_size={s.reference_batch_size} must be positive or None')
  if not _finite(s.base_lr) or s.base_lr <= 0:
    fail(f'schedule.base_lr={s.base_lr} must be a positive finite number (e.g. 0.1)')
  if not _finite(s.warmup_lr) or s.warmup_lr < 0 or not 0 < s.warmup_until_error <= 1:
    fail('schedule.warmup_lr must be finite and >= 0, and warmup_until_error in (0, 1]')
  _validate_warmup_and_decay(s, fail)


def _validate_warmup_and_decay(s, fail):
  steps = s.get('warmup_steps', 0)
  if not isinstance(steps, int) or not 0 <= steps < s.total_steps:
    fail(f'schedule.warmup_steps={steps!r} must be an integer in [0, total_steps={s.total_steps})')
  if steps and s.warmup_lr:
    fail(
      f'schedule.warmup_steps={steps} and warmup_lr={s.warmup_lr} are two warm-ups; '
      'set one of them to 0'
    )
  fraction = s.get('end_lr_fraction', 0.0)
  if not _finite(fraction) or not 0 <= fraction <= 1:
    fail(f'schedule.end_lr_fraction={fraction} must be in [0, 1]')
  power = s.get('polynomial_power', 2.0)
  if not _finite(power) or power <= 0:
    fail(f'schedule.polynomial_power={power} must be a positive number (e.g. 2)')
  init = s.get('warmup_init_lr', 0.0)
  if not _finite(init) or init < 0:
    fail(f'schedule.warmup_init_lr={init} must be a finite number >= 0')


def _validate_regularizers(config, fail):
  """The options beyond the paper's recipe: mixing, EMA, erasing, TrivialAugment."""
  m, e = config.mixing, config.ema
  for key in ('mixup_alpha', 'cutmix_alpha'):
    if not _finite(m[key]) or m[key] < 0:
      fail(f'mixing.{key}={m[key]} must be a finite number >= 0 (0 turns it off; e.g. 0.2)')
  if not _finite(m.cutmix_probability) or not 0 <= m.cutmix_probability <= 1:
    fail(f'mixing.cutmix_probability={m.cutmix_probability} must be in [0, 1]')
  if not _finite(e.decay) or not 0 <= e.decay < 1:
    fail(f'ema.decay={e.decay} must be in [0, 1) (0 turns it off; e.g. 0.9999)')
  for key, low in (('every_steps', 1), ('warmup_steps', 0)):
    if not isinstance(e[key], int) or e[key] < low:
      fail(f'ema.{key}={e[key]!r} must be an integer >= {low}')
  inp = config.input
  if not _finite(inp.random_erasing) or not 0 <= inp.random_erasing <= 1:
    fail(f'input.random_erasing={inp.random_erasing} must be a probability in [0, 1] (e.g. 0.1)')
  if inp.trivial_augment and inp.get('device_resident'):
    fail(
      'input.trivial_augment runs on the host, but input.device_resident keeps the '
      'training images on the devices; turn one of them off'
    )


def _validate_optimizer(config, fail):
  o = config.optimizer
  if not _finite(o.weight_decay) or o.weight_decay < 0:
    fail(f'optimizer.weight_decay={o.weight_decay} must be a finite number >= 0 (e.g. 1e-4)')
  if not _finite(o.momentum) or not 0 <= o.momentum < 1:
    fail(f'optimizer.momentum={o.momentum} must be in [0, 1) (e.g. 0.9)')
  kind = o.get('kind', 'sgd')
  if kind not in OPTIMIZERS:
    fail(f'optimizer.kind={kind!r}; set it to one of {OPTIMIZERS}')
  if kind == 'lars' and (not _finite(o.lars_trust_coefficient) or o.lars_trust_coefficient <= 0):
    fail(f'optimizer.lars_trust_coefficient={o.lars_trust_coefficient} must be positive')
  if kind == 'adamw':
    if not all(_finite(b) and 0 <= b < 1 for b in (o.adam_b1, o.adam_b2)):
      fail(f'optimizer.adam_b1={o.adam_b1} and adam_b2={o.adam_b2} must be in [0, 1)')
    if not _finite(o.adam_eps) or o.adam_eps <= 0:
      fail(f'optimizer.adam_eps={o.adam_eps} must be positive (e.g. 1e-8)')
  smoothing = config.get('label_smoothing', 0.0)
  if not _finite(smoothing) or not 0 <= smoothing < 1:
    fail(f'label_smoothing={smoothing} must be in [0, 1) (e.g. 0.1)')


def _validate_finetuning(config, fail):
  pattern = config.get('freeze') or ''
  try:
    re.compile(pattern)
  except re.error as e:
    fail(f'freeze={config.freeze!r} is not a regular expression ({e})')
  if pattern and (problem := freeze_problem(pattern, _parameter_names(config))):
    fail(problem)


def _parameter_names(config) -> list[str]:
  """The config's model's parameter names ('stage1_block1/conv1/kernel'), from
  shapes alone. Neither the dtype nor the number of classes changes a name."""
  options = {k: v for k, v in _set_options(config).items() if k not in ('dtype', 'num_classes')}
  params = models.abstract_variables(models.create_model(config.model, **options))['params']
  return list(flax.traverse_util.flatten_dict(params, sep='/'))


def freeze_problem(pattern: str, names: list[str]) -> str | None:
  """Why `--config.freeze=pattern` (re.search on each name) cannot fine-tune
  parameters `names`: it matches none of them, or all (nothing would train).
  None if it can."""
  regex = re.compile(pattern)
  frozen = [name for name in names if regex.search(name)]
  if not frozen:
    return f'--config.freeze={pattern!r} matches no parameter (names look like {names[0]!r})'
  if len(frozen) == len(names):
    return (
      f'--config.freeze={pattern!r} matches every parameter ({names[0]!r} ... {names[-1]!r}), '
      "so nothing would train; narrow it, e.g. '^(conv_init|bn_init|stage1_)' (the stem "
      "and first stage) or '^(?!fc/)' (all but the classifier)"
    )
  return None


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def _validate_steps_per_dispatch(config, fail):
  k = config.get('steps_per_dispatch', 1)
  if not isinstance(k, int) or k < 1:
    fail(f'steps_per_dispatch={k!r} must be a positive integer')
  if k == 1:
    return
  values = {
    key: config[key] for key in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps')
  }
  values['schedule.total_steps'] = config.schedule.total_steps
  if config.stop_after_steps is not None:
    values['stop_after_steps'] = config.stop_after_steps
  bad = ', '.join(f'{key}={v}' for key, v in values.items() if v % k)
  if bad:
    fail(
      f'steps_per_dispatch={k} must divide {bad} (logs, evaluations, checkpoints '
      'and the end fall between dispatches); pick a divisor or change those fields'
    )


def _validate_eval(config, info, fail):
  e = config.eval
  protocols = (e.protocol,) + tuple(e.final_protocols)
  for name in protocols:
    if name not in PROTOCOLS:
      fail(f'eval protocol {name!r}; set --config.eval.protocol to one of {PROTOCOLS}')
  if 'ensemble' in e.final_protocols:
    fail("eval.final_protocols cannot hold 'ensemble'; run it with --mode=evaluate")
  if info.family == 'cifar':
    for name in protocols:
      if name not in ('center', 'ensemble'):
        fail(
          f'CIFAR is tested on the single original view (section 4.2): eval '
          f"protocol {name!r} is for ImageNet; use 'center'"
        )
    if e.protocol == 'ensemble' and e.ensemble_protocol != 'center':
      fail(
        f'eval.ensemble_protocol={e.ensemble_protocol!r} is for ImageNet; CIFAR '
        'members are tested on the original view: set --config.eval.ensemble_protocol=center'
      )
  if e.ensemble_protocol not in PROTOCOLS[:3]:
    fail(f'eval.ensemble_protocol={e.ensemble_protocol!r} must be one of {PROTOCOLS[:3]}')
  if e.protocol == 'ensemble' and e.get('ema'):
    fail('eval.ema scores one workdir; an ensemble scores each member as trained')
  if e.protocol == 'ensemble' and not e.ensemble_workdirs:
    fail("eval.protocol='ensemble' needs --config.eval.ensemble_workdirs=DIR1,DIR2,...")
  if not 0 < e.crop_size <= e.resize_size:
    fail(
      f'eval.crop_size={e.crop_size} must be positive and at most eval.resize_size={e.resize_size}'
    )
  if not e.scales or any(s <= 0 for s in e.scales):
    fail(f'eval.scales={tuple(e.scales)} must be positive shorter-side sizes')


def _validate_imagenet_input(config, fail):
  inp = config.input
  low, high = inp.scale_range
  if inp.get('train_crop', 'scale') == 'scale' and not inp.image_size <= low <= high:
    fail(
      f'input.scale_range={tuple(inp.scale_range)} must satisfy image_size '
      f'({inp.image_size}) <= min <= max'
    )
  if inp.normalization not in NORMALIZATIONS:
    fail(f'input.normalization={inp.normalization!r}; set it to one of {NORMALIZATIONS}')
  if inp.lighting_std < 0:
    fail(f'input.lighting_std={inp.lighting_std} must be >= 0')
  if inp.num_workers is not None and inp.num_workers < 0:
    fail(f'input.num_workers={inp.num_workers} must be >= 0 (or None for one per core)')
  crop = inp.get('train_crop', 'scale')
  if crop not in TRAIN_CROPS:
    fail(f'input.train_crop={crop!r}; set it to one of {TRAIN_CROPS}')
  area = tuple(inp.get('crop_area_range', (0.08, 1.0)))
  if len(area) != 2 or not all(map(_finite, area)) or not 0 < area[0] <= area[1] <= 1:
    fail(f'input.crop_area_range={area} must be (min, max) with 0 < min <= max <= 1')
  aspect = tuple(inp.get('crop_aspect_range', (3 / 4, 4 / 3)))
  if len(aspect) != 2 or not all(map(_finite, aspect)) or not 0 < aspect[0] <= aspect[1]:
    fail(f'input.crop_aspect_range={aspect} must be (min, max) with 0 < min <= max')
