"""ResNet-18 on ImageNet (Table 2, Fig. 4 right): option A, as Table 2.

The recipe, views and test protocols are `config_lib.imagenet`'s.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet18')
  config.model_options.shortcut = 'A'
  return config
