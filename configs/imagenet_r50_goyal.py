r"""ResNet-50 on ImageNet at batch 8,192 in 90 epochs: Goyal et al. 2017.

"Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (arXiv
1706.02677), section 5.1 and its large-batch rules:

- the linear scaling rule: lr 0.1 x 8192 / 256 = 3.2 (`schedule.reference_batch_size`);
- gradual warm-up: from 0.1 up to 3.2 linearly over the first 5 epochs;
- lr / 10 at epochs 30, 60 and 80 of 90 (the boundaries count from step 0);
- SGD with momentum 0.9, weight decay 1e-4, none on the BN scales and
  offsets (here: none on biases either; ResNet-50's only bias is the classifier's);
- BN statistics over 32 images (the per-GPU batch of their 256 GPUs),
  whatever the device count (`bn_group_size=32`);
- each residual branch's last BN scale starts at 0 (`zero_init_last_bn`);
- the ResNet-50 of fb.resnet.torch: stride 2 on the bottleneck's 3x3;
- scale and aspect-ratio augmentation (Inception's random-resized 224 crop)
  and flips; single 224 center crop of the image resized to 256 for testing.

Assumes a pod slice or cluster of 32-256 accelerators (8,192 / devices
images per device, a multiple of 32); on fewer, add
`--config.gradient_accumulation_steps=K` (BN statistics stay per 32 images).

    python -m resnet_jax.main --config=configs/imagenet_r50_goyal.py \
        --workdir=runs/imagenet_r50_goyal --config.input.data_dir=DIR

Expect (their Table 1, 5 runs): 23.74% +- 0.09 top-1 validation error,
against 23.60% +- 0.12 at batch 256 with the same recipe.
"""

from resnet_jax import config_lib

IMAGENET_TRAIN_IMAGES = 1_281_167
BATCH = 8192


def get_config():
  config = config_lib.imagenet('resnet50')
  config.model_options.shortcut = 'B'
  config.model_options.downsample_on_3x3 = True
  config.model_options.zero_init_last_bn = True
  config.model_options.bn_group_size = 32
  config.input.batch_size = BATCH
  config.input.train_crop = 'random_resized'
  config.input.holdout_validation = False  # A fixed schedule: nothing to steer.
  config.optimizer.exclude_bn_and_bias = True

  epoch = lambda epochs: config_lib.steps_for_epochs(epochs, IMAGENET_TRAIN_IMAGES, BATCH)
  config.schedule.kind = 'piecewise'
  config.schedule.base_lr = 0.1
  config.schedule.reference_batch_size = 256
  config.schedule.warmup_steps = epoch(5)
  config.schedule.warmup_init_lr = 0.1
  config.schedule.total_steps = epoch(90)
  config.schedule.boundaries = (epoch(30), epoch(60), epoch(80))

  config.eval.protocol = 'center'
  config.eval.final_protocols = ('center',)
  config.eval_every_steps = epoch(5)
  config.checkpoint_every_steps = epoch(1)
  config.log_every_steps = 20
  return config
