r"""ResNet-18 on imagenette224 in a few minutes of a CPU: the first step of
the own-data walkthrough (docs/own_data.md).

The ImageNet recipe (section 3.4: scale augmentation, crops, flips, PCA
lighting, SGD with momentum, weight decay) at half resolution (112 crops of
the image with its shorter side in [128, 240]; testing at shorter side 128),
batch 32 with the linearly scaled lr (0.0125), 150 iterations, lr /10 at 100
and 130, evaluated on the first 500 validation images. Option-B shortcuts,
as torchvision's ResNet-18, so its weights and these are interchangeable.

    python -m resnet_jax.main --config=configs/quick_imagenette_r18.py \
        --workdir=runs/quick_imagenette_r18 --config.input.data_dir=DIR

Expect: far from converged (half an epoch): 57.4% center-crop error (12.2%
top-5) on those 500 images after the 150 steps (chance 90%); 12 min on a
2-core CPU (docs/own_data.md).
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenette('resnet18')
  config.model_options.shortcut = 'B'
  config.input.image_size = 112
  config.input.scale_range = (128, 240)
  config.eval.resize_size = 128
  config.eval.crop_size = 112
  config.eval.scales = (112, 128, 192, 240, 320)
  config.input.batch_size = 32
  config.input.eval_split = 'validation[:500]'
  config.input.holdout_validation = False
  config.schedule.kind = 'piecewise'
  config.schedule.total_steps = 150
  config.schedule.boundaries = (100, 130)
  config.eval.final_protocols = ('center',)
  config.log_every_steps = 10
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 50
  return config
