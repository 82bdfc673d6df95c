"""Plain-32 on CIFAR-10 (Fig. 6, left), the paper's section 4.2 recipe.

The same stack as ResNet-32 with no shortcuts: batch 128, momentum 0.9, weight
decay 1e-4, lr 0.1 /10 at 32k and 48k, end at 64k.
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar10('cifar_plain32')
