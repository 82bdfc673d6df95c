"""ResNet-18 on imagenette224, the local 10-class ImageNet proxy (Table 2's
ordering at the paper's resolution, on an accelerator).

The ImageNet recipe and views with a schedule for 9k images
(`config_lib.imagenette`); data in ../shared/data/tfds.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenette('resnet18')
  config.model_options.shortcut = 'A'
  return config
