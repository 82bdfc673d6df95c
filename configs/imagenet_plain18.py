"""Plain-18 on ImageNet (Table 2, Fig. 4 left): no shortcuts.

The recipe, views and test protocols are `config_lib.imagenet`'s.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('plain18')
  return config
