"""The experiment configs: the paper's CIFAR-10 and ImageNet recipes, and validation.

Every config file under `configs/` starts from `cifar10()` or `imagenet()` and
changes a few fields. Every field exists in the base (model options that keep
the model's default are `None` placeholders), so any of them can be set from
the command line (`--config.model_options.shortcut=B`). `validate` checks a
config before anything is compiled or read, so bad input fails fast with the
fix in the message.
"""

import math
import re

import flax.traverse_util
import ml_collections
from ml_collections import config_dict

from resnet_jax import data, errors, models

PROTOCOLS = ('center', 'ten_crop', 'multi_scale', 'ensemble')
# Compute dtypes ('auto': bfloat16 on GPU/TPU, float32 on CPU); params stay float32.
DTYPES = ('auto', None, 'float32', 'bfloat16', 'float16')
SCHEDULES = ('piecewise', 'plateau', 'cosine', 'polynomial')
OPTIMIZERS = ('sgd', 'nesterov', 'lars', 'adamw')
NORMALIZATIONS = ('channel_mean_std', 'pixel_mean')


def _model_options() -> ml_collections.ConfigDict:
  """Every `models.OPTIONS` field; None keeps the named model's default."""
  options = ml_collections.ConfigDict()
  options.num_classes = config_dict.placeholder(int)  # None: the dataset's.
  options.shortcut = config_dict.placeholder(str)  # 'A', 'B' or 'C'.
  # 'auto': bfloat16 on GPU/TPU, float32 on CPU (where bf16 is no faster).
  options.dtype = 'auto'
  options.bn_momentum = config_dict.placeholder(float)
  options.bn_epsilon = config_dict.placeholder(float)
  options.bn_group_size = config_dict.placeholder(int)
  options.zero_init_last_bn = config_dict.placeholder(bool)
  options.downsample_on_3x3 = config_dict.placeholder(bool)
  options.scan_blocks = config_dict.placeholder(bool)
  return options


def _common(model: str) -> ml_collections.ConfigDict:
  """Fields shared by every experiment; the recipes fill in their values."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model
  config.model_options = _model_options()

  config.input = ml_collections.ConfigDict()
  # Any TFDS image-classification dataset by name (classes, splits and sizes
  # from its metadata), or 'folder': a folder of images at `data_dir`
  # (DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg; see data.folder).
  config.input.dataset = ''
  # The TFDS data directory (None: TFDS_DATA_DIR or TFDS's default), or the
  # root of a 'folder' dataset.
  config.input.data_dir = config_dict.placeholder(str)
  # 'cifar' (small images in memory, augmented on the device) or 'imagenet'
  # (streamed JPEGs, the ImageNet views); set by the recipe, None: from the
  # images' size (data.catalog).
  config.input.family = config_dict.placeholder(str)
  # Folder datasets: leave out unreadable image files (each is checked once at
  # start-up, and their count printed) instead of failing on the first one.
  config.input.skip_bad_images = False
  # TFDS split to evaluate on instead of the dataset's whole test/validation
  # split, e.g. 'validation[:1000]' for a quick look. None: the whole split.
  config.input.eval_split = config_dict.placeholder(str)
  # TFDS split to train on instead of the dataset's training split, e.g.
  # 'train[:1000]' for a quick look (not with holdout_validation). None: all.
  config.input.train_split = config_dict.placeholder(str)
  # Hold out the last `num_holdout` training examples: train on the rest and
  # report error on them as `holdout_error` (the plateau rule watches it).
  config.input.holdout_validation = False

  # Fine-tuning. A fresh run starts from these weights: a training workdir
  # (its latest checkpoint) or a torchvision .pth/.safetensors file; a
  # classifier of another number of classes is re-initialised (weights.init_from).
  config.init_from = ''
  # Regex over parameter names ('stage1_block1/conv1/kernel', 'fc/bias'):
  # the matching parameters stay fixed (no update, no weight decay).
  config.freeze = ''
  # True: BatchNorm normalises with, and keeps, its running statistics (as
  # in evaluation); False: batch statistics, as when training from scratch.
  config.freeze_batch_stats = False

  config.optimizer = ml_collections.ConfigDict()
  # 'sgd': the paper's SGD with momentum. 'nesterov': the same with Nesterov
  # momentum. 'lars': layer-wise trust ratios for large batches (You et al.
  # 2017). 'adamw': Adam with decoupled weight decay (training.optimizers).
  config.optimizer.kind = 'sgd'
  config.optimizer.momentum = 0.9
  # L2 penalty added to the gradient before momentum, as in the paper (Caffe).
  config.optimizer.weight_decay = 1e-4
  # False: decay every parameter (the paper). True: skip BN params and biases.
  config.optimizer.exclude_bn_and_bias = False
  # kind='lars': a parameter's step is this fraction of its norm (over the
  # decayed gradient's norm), times the lr.
  config.optimizer.lars_trust_coefficient = 0.001
  # kind='adamw': Adam's moment decays and epsilon (momentum is not used).
  config.optimizer.adam_b1 = 0.9
  config.optimizer.adam_b2 = 0.999
  config.optimizer.adam_eps = 1e-8
  # Targets (1 - label_smoothing) on the label and the rest spread evenly over
  # all classes, in the training loss only. 0: the paper's one-hot targets.
  config.label_smoothing = 0.0

  config.schedule = ml_collections.ConfigDict()
  config.schedule.base_lr = 0.1
  # If set, the lr is base_lr * batch_size / reference_batch_size (the linear
  # scaling rule of Goyal et al. 2017), so changing the batch keeps the recipe.
  config.schedule.reference_batch_size = config_dict.placeholder(int)
  config.schedule.decay_factor = 0.1
  # 'piecewise': divide the lr by 1/decay_factor at `boundaries` (steps).
  # 'plateau': divide it when `holdout_error` has not improved (relative
  # `plateau_rtol`) for `plateau_patience` evaluations, at most
  # `plateau_max_decays` times (optax.contrib.reduce_on_plateau).
  # 'cosine', 'polynomial': decay from base_lr to base_lr * end_lr_fraction
  # at total_steps, as a half cosine or as (1 - t)**polynomial_power.
  config.schedule.kind = 'piecewise'
  config.schedule.end_lr_fraction = 0.0
  config.schedule.polynomial_power = 2.0
  # Linear warm-up from 0 to base_lr over the first `warmup_steps` steps,
  # before any kind of schedule (piecewise boundaries still count from step 0).
  # Not with the paper's error-driven warm-up `warmup_lr`. 0 turns it off.
  config.schedule.warmup_steps = 0
  config.schedule.plateau_patience = 3
  config.schedule.plateau_rtol = 0.01
  config.schedule.plateau_cooldown = 0
  config.schedule.plateau_max_decays = 3
  # Warm-up of ResNet-110/1202: lr `warmup_lr` until the (smoothed) training
  # error falls below `warmup_until_error`, then base_lr. 0 turns it off.
  config.schedule.warmup_lr = 0.0
  config.schedule.warmup_until_error = 0.8
  # Exponential moving average that smooths the per-batch error for the rule.
  config.schedule.warmup_error_smoothing = 0.9
  # Safety cap: warm-up ends here even if the rule has not fired.
  config.schedule.warmup_max_steps = 2000

  config.eval = ml_collections.ConfigDict()
  # `--mode=evaluate` runs `protocol`; the end of training runs `final_protocols`.
  config.eval.protocol = 'center'
  config.eval.final_protocols = ('center',)
  # ImageNet views (section 3.4): shorter side `resize_size`, `crop_size` crops;
  # multi-scale: whole images at these shorter sides, with their flips.
  config.eval.resize_size = 256
  config.eval.crop_size = 224
  config.eval.scales = (224, 256, 384, 480, 640)
  # Protocol 'ensemble': comma-separated workdirs whose scores are averaged
  # (each with its own saved config), each evaluated with `ensemble_protocol`.
  config.eval.ensemble_workdirs = ''
  config.eval.ensemble_protocol = 'ten_crop'

  # Train steps per compiled call (`lax.scan` over K batches): on a GPU,
  # small nets are bound by the per-step launch and host round-trip. Logging,
  # evaluation, checkpoints and total_steps must be multiples of it.
  config.steps_per_dispatch = 1
  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  # End this run early (with a checkpoint) after this many steps in all; run
  # again to resume. For time-limited job slots. None: run to total_steps.
  config.stop_after_steps = config_dict.placeholder(int)
  return config


def cifar10(model: str = 'cifar_resnet20') -> ml_collections.ConfigDict:
  """Section 4.2 of the paper, for the named CIFAR net.

  Batch 128, SGD with momentum 0.9, L2 weight decay 1e-4 on all weights, lr 0.1
  divided by 10 at 32k and 48k iterations, training ends at 64k; per-pixel mean
  subtraction, 4-pixel padding + random crop + flip; option-A shortcuts (the
  model's default). Trains on all 50k images and reports test error, as Table 6.
  """
  config = _common(model)
  config.input.dataset = 'cifar10'
  config.input.family = 'cifar'
  config.input.batch_size = 128  # Global batch, split over all devices.
  # Images per evaluation batch (rounded down to a multiple of the devices).
  config.input.eval_batch_size = 1000
  # True: the paper's 45k/5k train/val split.
  config.input.num_holdout = 5000
  # Keep the training images on every device (150 MB); the host then sends
  # only example indices. For accelerators, with steps_per_dispatch > 1.
  config.input.device_resident = False
  config.schedule.total_steps = 64_000
  config.schedule.boundaries = (32_000, 48_000)
  config.eval.ensemble_protocol = 'center'  # CIFAR's only test view.
  return config


def imagenet(model: str = 'resnet50') -> ml_collections.ConfigDict:
  """Section 3.4 of the paper, for the named ImageNet net.

  Batch 256, SGD with momentum 0.9, L2 weight decay 1e-4, lr 0.1 divided by 10
  when the error plateaus, up to 600k iterations; scale augmentation (shorter
  side in [256, 480], random 224 crop, flip), PCA lighting; 10-crop testing
  for comparisons, multi-scale for the best results.
  """
  config = _common(model)
  config.input.dataset = 'imagenet2012'
  config.input.family = 'imagenet'
  config.input.batch_size = 256  # Global batch, split over all devices.
  # Crop-sized views per evaluation batch (10-crop: a tenth as many images;
  # rounded down to a multiple of the devices).
  config.input.eval_batch_size = 500
  config.input.image_size = 224  # The training crop.
  config.input.scale_range = (256, 480)  # Shorter side before cropping.
  config.input.lighting_std = 0.1  # AlexNet PCA lighting; 0 turns it off.
  # The paper subtracts a per-pixel mean. Under scale augmentation a pixel's
  # mean over random crops of random scales is the same everywhere, so the
  # per-pixel mean is the per-channel mean; the Torch reproductions also divide
  # by the per-channel std, which conditions SGD better and works on inputs of
  # any size (multi-scale testing). 'pixel_mean' is the paper's literal recipe,
  # estimated from `num_mean_images` training images at the center view.
  config.input.normalization = 'channel_mean_std'
  config.input.num_mean_images = 10_000
  # Grain worker processes decoding JPEGs (0: in the main process). None: one
  # per CPU core.
  config.input.num_workers = config_dict.placeholder(int)
  # The paper's numbers are on val, so the plateau rule watches a held-out
  # slice of the training set (10k of 1.28M images), never val.
  config.input.holdout_validation = True
  config.input.num_holdout = 10_000

  config.schedule.kind = 'plateau'
  config.schedule.total_steps = 600_000
  config.schedule.reference_batch_size = 256
  # For kind='piecewise': about every 30 epochs (5k steps per epoch at batch
  # 256), where the paper's Fig. 4 curves drop.
  config.schedule.boundaries = (150_000, 300_000, 450_000)
  config.schedule.plateau_patience = 3  # Evaluations, i.e. 3 x 5k steps.
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 5_000
  config.log_every_steps = 200

  config.eval.protocol = 'ten_crop'
  config.eval.final_protocols = ('center', 'ten_crop', 'multi_scale')
  return config


def imagenette(model: str = 'resnet18') -> ml_collections.ConfigDict:
  """The ImageNet recipe on `imagenette224`, the 10-class local proxy.

  Same views and optimiser; the schedule is shortened to the small training
  set (9,469 images, 37 steps per epoch at batch 256) and the held-out slice
  is 500 images.
  """
  config = imagenet(model)
  config.input.dataset = 'imagenette224'
  config.input.num_holdout = 500
  config.schedule.total_steps = 6_000  # About 170 epochs.
  config.schedule.boundaries = (3_000, 4_500)
  config.schedule.plateau_patience = 4
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 500
  config.log_every_steps = 25
  return config


RECIPES = {'cifar': cifar10, 'imagenet': imagenet}  # Input family -> its recipe.


def family(config) -> str:
  """The input family a config is for, known without its dataset.

  The recipe decides it: only `imagenet()` configs hold the fields that the
  ImageNet pipeline reads (`input.image_size`, `scale_range`, ...).
  `input.family` cannot: None leaves the choice to the dataset's images, and
  configs saved by older versions lack it. `validate` checks that the
  dataset's family (`data.dataset_info`) is this one.

  Args:
    config: an experiment config, or one saved as JSON (a dict), of any version.

  Returns:
    'imagenet' if its `input` has `image_size`, else 'cifar'.
  """
  return 'imagenet' if 'image_size' in config.get('input', {}) else 'cifar'


def model_family(model: str) -> str:
  """The input family the named net is built for: its stem's ('imagenet': a
  7x7/2 convolution and a max pool; 'cifar': one 3x3 convolution)."""
  return models.MODELS[model]['stem']


def recipe(model: str) -> ml_collections.ConfigDict:
  """The paper's recipe for the named net: `imagenet(model)` for the ImageNet
  nets (section 3.4), `cifar10(model)` for the CIFAR ones (section 4.2)."""
  return RECIPES[model_family(model)](model)


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A config saved as JSON (a workdir's `config.json`) as a typed config:
  its recipe's fields, with the saved values (JSON lists back to tuples), so
  that `--config.*` overrides apply to it as to a config file's."""
  config = RECIPES[family(saved)](saved['model'])
  _fill(config, saved)
  return config


def _fill(node: ml_collections.ConfigDict, saved: dict):
  for key, value in saved.items():
    current = node.get(key) if key in node else None
    if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
      _fill(current, value)
      continue
    if isinstance(value, list):
      value = tuple(value)
    if key in node:
      node[key] = value
    else:  # A field of another version of the recipe: kept as saved.
      with node.unlocked():
        node[key] = value


def with_warmup(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Section 4.2's warm-up for ResNet-110 (the paper's 'about 400 iterations')."""
  config.schedule.warmup_lr = 0.01
  return config


def scaled_lr(config: ml_collections.ConfigDict) -> float:
  """The base lr for the configured batch (linear scaling, if asked for)."""
  s = config.schedule
  if s.reference_batch_size:
    return s.base_lr * config.input.batch_size / s.reference_batch_size
  return s.base_lr


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1):
  """Raises ConfigError naming the problem and its fix; returns None if fine."""

  def fail(msg):
    raise errors.ConfigError(f'bad config: {msg}')

  info = _validate_model_and_dataset(config, fail)
  _validate_batch(config, num_devices, num_processes, fail)
  _validate_schedule(config, fail)
  _validate_optimizer(config, fail)
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
      f'model_options.bn_group_size={group} does not fit input.batch_size={size} '
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
  if not inp.image_size <= low <= high:
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
