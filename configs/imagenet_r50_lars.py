r"""ResNet-50 on ImageNet at batch 32,768 with LARS: the MLPerf recipe.

LARS (You et al. 2017, "Large Batch Training of Convolutional Networks") as
in Google's JAX ResNet-50 for MLPerf Training (TPU v3; its
`polynomial_learning_rate_fn` and optimizer set-up) at batch 32,768:

- LARS with momentum 0.929, trust coefficient 0.001, epsilon 0, weight
  decay 1e-4 on the convolution and dense kernels; BN scales and offsets
  and biases get plain momentum, no decay and no trust ratio;
- lr 29.0 (not scaled to the batch: LARS sets each layer's step size), warmed
  up linearly from 0 over 18 epochs, then polynomial decay of power 2 to
  1e-4 at the end of 64 epochs;
- label smoothing 0.1;
- BN statistics over each device's 128 images (`bn_group_size=128`);
- ResNet-50 v1.5 (stride 2 on the bottleneck's 3x3), Inception-style
  random-resized 224 crops and flips, no PCA lighting; one 224 center crop
  for testing.

Assumes 256 accelerators (128 images each), e.g. a TPU v3-256 or v4-256
slice; it runs unchanged on any device count that divides the batch into
multiples of 128 per device, or with `--config.gradient_accumulation_steps=K`
on fewer.

    python -m resnet_jax.main --config=configs/imagenet_r50_lars.py \
        --workdir=runs/imagenet_r50_lars --config.input.data_dir=DIR

Expect: MLPerf's quality target, 75.9% top-1 validation accuracy (24.1%
error), which these submissions reached within the 64 epochs.
"""

from resnet_jax import config_lib

IMAGENET_TRAIN_IMAGES = 1_281_167
BATCH = 32_768


def get_config():
  config = config_lib.imagenet('resnet50')
  config.model_options.shortcut = 'B'
  config.model_options.downsample_on_3x3 = True
  config.model_options.bn_group_size = 128
  config.input.batch_size = BATCH
  config.input.train_crop = 'random_resized'
  config.input.lighting_std = 0.0
  config.input.holdout_validation = False  # A fixed schedule: nothing to steer.
  config.label_smoothing = 0.1

  config.optimizer.kind = 'lars'
  config.optimizer.momentum = 0.929
  config.optimizer.weight_decay = 1e-4
  config.optimizer.exclude_bn_and_bias = True
  config.optimizer.lars_trust_coefficient = 0.001

  epoch = lambda epochs: config_lib.steps_for_epochs(epochs, IMAGENET_TRAIN_IMAGES, BATCH)
  config.schedule.kind = 'polynomial'
  config.schedule.base_lr = 29.0
  config.schedule.reference_batch_size = None
  config.schedule.warmup_steps = epoch(18)
  config.schedule.total_steps = epoch(64)
  config.schedule.polynomial_power = 2.0
  config.schedule.end_lr_fraction = 1e-4 / 29.0

  config.eval.protocol = 'center'
  config.eval.final_protocols = ('center',)
  config.eval_every_steps = epoch(4)
  config.checkpoint_every_steps = epoch(1)
  config.log_every_steps = 10
  return config
