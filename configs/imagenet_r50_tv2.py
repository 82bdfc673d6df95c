r"""ResNet-50 on ImageNet with torchvision's new recipe (its IMAGENET1K_V2 weights).

torchvision's reference recipe for `resnet50` `IMAGENET1K_V2` ("How to Train
State-Of-The-Art Models Using TorchVision's Latest Primitives", 2021, and
the command in its classification references): 8 GPUs x 128 images,

- SGD with momentum 0.9, lr 0.5, weight decay 2e-5, none on BN (here: none
  on biases either);
- 600 epochs: linear warm-up over 5 epochs from 0.01 x lr, then cosine
  annealing to 0;
- label smoothing 0.1; mixup (alpha 0.2) or CutMix (alpha 1.0), one of the
  two per batch at random;
- random-resized 176 crops and flips, TrivialAugment (wide), random erasing
  with probability 0.1, no PCA lighting;
- an EMA of the weights, updated every 32 steps with decay 0.998908
  (torchvision's 0.99998 adjusted by batch 1024 x 32 steps / 600 epochs),
  reset to the weights during the warm-up;
- testing at a higher resolution than training: shorter side 232, central
  224 crop;
- ResNet-50 v1.5 (stride 2 on the bottleneck's 3x3), as torchvision's.

Not reproduced: the repeated-augmentation sampler (`--ra-sampler
--ra-reps 4`), which shows each image 4 times per epoch on different
devices; this pipeline shuffles each epoch once.

Assumes 8 accelerators (128 images each); any device count dividing 1,024
works the same (BN over each device's share of the batch, as torchvision's).

    python -m resnet_jax.main --config=configs/imagenet_r50_tv2.py \
        --workdir=runs/imagenet_r50_tv2 --config.input.data_dir=DIR

Expect (torchvision's model card for IMAGENET1K_V2): 80.858% top-1 (19.14%
error) and 95.434% top-5 accuracy, center crop; score the average with
`--mode=evaluate --config.eval.ema=True` (training writes both).
"""

from resnet_jax import config_lib

IMAGENET_TRAIN_IMAGES = 1_281_167
BATCH = 1024
EPOCHS = 600


def get_config():
  config = config_lib.imagenet('resnet50')
  config.model_options.shortcut = 'B'
  config.model_options.downsample_on_3x3 = True
  config.input.batch_size = BATCH
  config.input.image_size = 176
  config.input.train_crop = 'random_resized'
  config.input.lighting_std = 0.0
  config.input.trivial_augment = True
  config.input.random_erasing = 0.1
  config.input.holdout_validation = False  # A fixed schedule: nothing to steer.
  config.label_smoothing = 0.1
  config.mixing.mixup_alpha = 0.2
  config.mixing.cutmix_alpha = 1.0
  config.mixing.cutmix_probability = 0.5

  config.optimizer.weight_decay = 2e-5
  config.optimizer.exclude_bn_and_bias = True

  epoch = lambda epochs: config_lib.steps_for_epochs(epochs, IMAGENET_TRAIN_IMAGES, BATCH)
  config.schedule.kind = 'cosine'
  config.schedule.base_lr = 0.5
  config.schedule.reference_batch_size = None
  config.schedule.warmup_steps = epoch(5)
  config.schedule.warmup_init_lr = 0.005
  config.schedule.total_steps = epoch(EPOCHS)

  ema_steps = 32
  config.ema.every_steps = ema_steps
  config.ema.decay = 1 - min(1.0, (1 - 0.99998) * BATCH * ema_steps / EPOCHS)
  config.ema.warmup_steps = epoch(5)

  config.eval.resize_size = 232
  config.eval.crop_size = 224
  config.eval.protocol = 'center'
  config.eval.final_protocols = ('center',)
  config.eval_every_steps = epoch(10)
  config.checkpoint_every_steps = epoch(1)
  config.log_every_steps = 100
  return config
