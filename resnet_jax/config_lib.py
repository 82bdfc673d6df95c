"""The experiment config: the paper's CIFAR-10 recipe, and its validation.

Every config file under `configs/` starts from `cifar10()` and changes a few
fields. `validate` checks a config before anything is compiled or read, so bad
input fails fast with the fix in the message.
"""

import ml_collections
from ml_collections import config_dict

from resnet_jax import input_pipeline, models


def cifar10(model: str = 'cifar_resnet20') -> ml_collections.ConfigDict:
  """Section 4.2 of the paper, for the named CIFAR net.

  Batch 128, SGD with momentum 0.9, L2 weight decay 1e-4 on all weights, lr 0.1
  divided by 10 at 32k and 48k iterations, training ends at 64k; per-pixel mean
  subtraction, 4-pixel padding + random crop + flip; option-A shortcuts (the
  model's default). Trains on all 50k images and reports test error, as Table 6.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = model
  # Any option of `models.create_model` (see models.OPTIONS); empty: the paper's.
  config.model_options = ml_collections.ConfigDict()
  config.model_options.dtype = 'float32'  # 'bfloat16' on accelerators.
  config.model_options.bn_group_size = config_dict.placeholder(int)

  config.input = ml_collections.ConfigDict()
  config.input.dataset = 'cifar10'
  config.input.data_dir = config_dict.placeholder(str)  # None: TFDS default.
  config.input.batch_size = 128  # Global batch, split over all devices.
  config.input.eval_batch_size = 1000
  # True: the paper's 45k/5k train/val split (train on train[:45000], also
  # report error on the held-out train[45000:]); False: all 50k, as Table 6.
  config.input.holdout_validation = False
  config.input.num_holdout = 5000

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.momentum = 0.9
  # L2 penalty added to the gradient before momentum, as in the paper (Caffe).
  config.optimizer.weight_decay = 1e-4
  # False: decay every parameter (the paper). True: skip BN params and biases.
  config.optimizer.exclude_bn_and_bias = False

  config.schedule = ml_collections.ConfigDict()
  config.schedule.base_lr = 0.1
  config.schedule.total_steps = 64_000
  config.schedule.boundaries = (32_000, 48_000)
  config.schedule.decay_factor = 0.1
  # Warm-up of ResNet-110/1202: lr `warmup_lr` until the (smoothed) training
  # error falls below `warmup_until_error`, then base_lr. 0 turns it off.
  config.schedule.warmup_lr = 0.0
  config.schedule.warmup_until_error = 0.8
  # Exponential moving average that smooths the per-batch error for the rule.
  config.schedule.warmup_error_smoothing = 0.9
  # Safety cap: warm-up ends here even if the rule has not fired.
  config.schedule.warmup_max_steps = 2000

  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  # End this run early (with a checkpoint) after this many steps in all; run
  # again to resume. For time-limited job slots. None: run to total_steps.
  config.stop_after_steps = config_dict.placeholder(int)
  return config


def with_warmup(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Section 4.2's warm-up for ResNet-110 (the paper's 'about 400 iterations')."""
  config.schedule.warmup_lr = 0.01
  return config


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1):
  """Raises ValueError naming the problem and its fix; returns None if fine."""

  def fail(msg):
    raise ValueError(f'bad config: {msg}')

  if config.model not in models.MODELS:
    fail(f'unknown model {config.model!r}; set --config.model to one of '
         f'{", ".join(models.MODELS)}')
  unknown = set(config.model_options) - set(models.OPTIONS)
  if unknown:
    fail(f'unknown model_options {sorted(unknown)}; valid: {", ".join(models.OPTIONS)}')
  if config.input.dataset not in input_pipeline.DATASETS:
    fail(f'unknown dataset {config.input.dataset!r}; set --config.input.dataset '
         f'to one of {sorted(input_pipeline.DATASETS)}')
  for key in ('batch_size', 'eval_batch_size'):
    size = config.input[key]
    if size <= 0 or size % num_devices:
      fail(f'input.{key}={size} is not a positive multiple of the {num_devices} '
           f'devices; set --config.input.{key} to a multiple of {num_devices}')
    if size % num_processes:
      fail(f'input.{key}={size} is not divisible by the {num_processes} processes')
  group = config.model_options.get('bn_group_size')
  if group is not None and group < 1:
    fail(f'model_options.bn_group_size={group} must be a positive integer (or None)')
  if group is not None and (config.input.batch_size // num_devices) % group:
    fail(f'model_options.bn_group_size={group} does not divide the per-device '
         f'batch {config.input.batch_size // num_devices}')
  s = config.schedule
  if s.total_steps <= 0:
    fail(f'schedule.total_steps={s.total_steps} must be positive')
  bounds = tuple(s.boundaries)
  if (any(not isinstance(b, int) or b <= 0 for b in bounds) or
      any(a >= b for a, b in zip(bounds, bounds[1:]))):
    fail(f'schedule.boundaries={bounds} must be positive integers (steps), '
         'strictly increasing')
  if bounds and bounds[-1] >= s.total_steps:
    fail(f'schedule.boundaries={bounds} reach past the end of training '
         f'(total_steps={s.total_steps}); lower them or raise total_steps')
  if s.warmup_lr < 0 or not 0 < s.warmup_until_error <= 1:
    fail('schedule.warmup_lr must be >= 0 and warmup_until_error in (0, 1]')
  for key in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
              'keep_checkpoints'):
    if config[key] <= 0:
      fail(f'{key}={config[key]} must be positive')
  if config.input.holdout_validation and not (
      0 < config.input.num_holdout < input_pipeline.DATASETS[config.input.dataset]['num_train']):
    fail(f'input.num_holdout={config.input.num_holdout} must be between 0 and '
         'the training-set size')
