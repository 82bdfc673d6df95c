"""ResNet-152 on ImageNet (Tables 3-5): bottlenecks, option B; the paper's
best single model (19.38% top-1 / 4.49% top-5 multi-scale, Table 4).

The recipe, views and test protocols are `config_lib.imagenet`'s.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet152')
  config.model_options.shortcut = 'B'
  return config
