"""ResNet-34 A on ImageNet (Tables 2-3, Fig. 4 right): zero-padding shortcuts,
the same parameters and FLOPs as plain-34.

The recipe, views and test protocols are `config_lib.imagenet`'s.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet34')
  config.model_options.shortcut = 'A'
  return config
