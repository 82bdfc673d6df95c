"""ResNet-34 C on ImageNet (Tables 3-4): projections on every shortcut.

The recipe, views and test protocols are `config_lib.imagenet`'s.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet34')
  config.model_options.shortcut = 'C'
  return config
