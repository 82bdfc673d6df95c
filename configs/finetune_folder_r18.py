r"""Fine-tunes an ImageNet-recipe ResNet-18 on a folder of images, with a new
head: the last step of the own-data walkthrough (docs/own_data.md).

Starts from a trained workdir (or torchvision's resnet18 weights, a .pth or
.safetensors file) given as --config.init_from; its classifier is
re-initialised when the folder has another number of classes. The stem and
the first stage stay frozen (`freeze`); the rest trains with lr 0.01, /10 at
step 70 of 100, at batch 32, on 64x64 crops (shorter side in [72, 96];
testing at shorter side 72), every other part of the recipe as
`config_lib.imagenet`. The folder: ROOT/train/<class>/*.jpg,
ROOT/val/<class>/*.jpg (PNG too).

    python -m resnet_jax.main --config=configs/finetune_folder_r18.py \
        --workdir=runs/finetune_folder --config.input.data_dir=ROOT \
        --config.init_from=runs/quick_imagenette_r18

Expect: on the walkthrough's folder of 5 CIFAR-10 classes (100 training and
20 validation images each, from `resnet_jax.tools.export_folder`), started
from configs/quick_imagenette_r18.py's workdir: 49.0% center-crop error on
the 100 validation images after the 100 steps (chance 80%), 52.0% 10-crop;
8 min on a 2-core CPU (docs/own_data.md).
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet18')
  config.model_options.shortcut = 'B'
  config.input.dataset = 'folder'
  config.init_from = ''  # Set on the command line: a workdir or a torchvision file.
  config.freeze = r'^(conv_init|bn_init|stage1_)'
  config.input.image_size = 64
  config.input.scale_range = (72, 96)
  config.eval.resize_size = 72
  config.eval.crop_size = 64
  config.eval.scales = (64, 72, 96)
  config.input.batch_size = 32
  config.input.holdout_validation = False
  config.schedule.kind = 'piecewise'
  config.schedule.base_lr = 0.01
  config.schedule.reference_batch_size = None
  config.schedule.total_steps = 100
  config.schedule.boundaries = (70,)
  config.eval.final_protocols = ('center',)
  config.log_every_steps = 10
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 50
  return config
