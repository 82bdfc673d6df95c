"""Plain-34 on ImageNet (Tables 2-3, Fig. 4 left): the degradation problem.

The recipe, views and test protocols are `config_lib.imagenet`'s.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('plain34')
  return config
