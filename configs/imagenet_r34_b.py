"""ResNet-34 B on ImageNet (Tables 3-4): projections where dimensions change.

The recipe, views and test protocols are `config_lib.imagenet`'s.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet34')
  config.model_options.shortcut = 'B'
  return config
