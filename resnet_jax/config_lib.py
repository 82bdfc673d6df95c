"""The experiment configs: the paper's CIFAR-10 and ImageNet recipes.

Every config file under `configs/` starts from `cifar10()` or `imagenet()` and
changes a few fields. Every field exists in the base (model options that keep
the model's default are `None` placeholders), so any of them can be set from
the command line (`--config.model_options.shortcut=B`). Every option beyond
the paper's recipe is off by default. `config_validation` checks a config
before anything is compiled or read.
"""

import ml_collections
from ml_collections import config_dict

from resnet_jax import models


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
  # TrivialAugment (Mueller & Hutter 2021; torchvision's 'wide' operations,
  # 31 magnitudes): one random operation of a random strength on each uint8
  # training image, on the host (data.trivial_augment). Not with CIFAR's
  # device_resident images.
  config.input.trivial_augment = False
  # Random erasing (Zhong et al. 2020, as torchvision): with this probability
  # a random box of each training image is set to 0 after normalisation (the
  # mean pixel), on the device inside the train step. 0: off.
  config.input.random_erasing = 0.0

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

  # Mixing pairs of training images and their labels, on the device inside
  # the train step (training.mixing). Each batch is mixed with itself in
  # reverse order. 0 turns a kind off; both off: the paper's unmixed images.
  config.mixing = ml_collections.ConfigDict()
  # mixup (Zhang et al. 2018): a blend, with a weight ~ Beta(alpha, alpha).
  config.mixing.mixup_alpha = 0.0
  # CutMix (Yun et al. 2019): a box of the partner pasted in, its area
  # fraction ~ Beta(alpha, alpha); the labels weighted by the areas.
  config.mixing.cutmix_alpha = 0.0
  # Both on: the chance that a batch gets CutMix rather than mixup (timm's
  # and torchvision's 0.5).
  config.mixing.cutmix_probability = 0.5

  # An exponential moving average of the weights and BN statistics (its own
  # variables in the checkpoint), evaluated beside the raw weights. Every
  # `every_steps` steps: ema = decay * ema + (1 - decay) * weights. Until
  # `warmup_steps` the average is the weights themselves. decay 0 turns it off.
  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.0
  config.ema.every_steps = 1
  config.ema.warmup_steps = 0

  # Each step's batch (input.batch_size) in this many micro-batches, one at a
  # time, their gradients averaged before one update: a large batch in the
  # memory of a small one. BatchNorm normalises each micro-batch by its own
  # statistics (as it does each device's group with bn_group_size).
  config.gradient_accumulation_steps = 1

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
  # Linear warm-up from `warmup_init_lr` to base_lr over the first
  # `warmup_steps` steps, before any kind of schedule (piecewise boundaries
  # still count from step 0). Not with the paper's error-driven warm-up
  # `warmup_lr`. 0 turns it off. Config files give epochs as
  # `steps_for_epochs(epochs, num_images, batch_size)`.
  config.schedule.warmup_steps = 0
  config.schedule.warmup_init_lr = 0.0
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
  # `--mode=evaluate` of a run trained with `ema`: score the weights' moving
  # average instead of the raw weights (written as '<protocol>_ema').
  config.eval.ema = False

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
  # The training crop: 'scale' (the paper's: shorter side S ~ U[scale_range],
  # a random image_size square) or 'random_resized' (Inception's, used by
  # the large-batch and newer recipes: a random part of the image of
  # `crop_area_range` of its area and `crop_aspect_range` aspect ratio (w/h),
  # resized to image_size).
  config.input.train_crop = 'scale'
  config.input.crop_area_range = (0.08, 1.0)
  config.input.crop_aspect_range = (3 / 4, 4 / 3)
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


def steps_for_epochs(epochs: float, num_images: int, batch_size: int) -> int:
  """Steps of `batch_size` that see `num_images` `epochs` times (rounded)."""
  return round(epochs * num_images / batch_size)


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
