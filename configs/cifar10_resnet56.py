"""ResNet-56 on CIFAR-10 (Table 6), the paper's section 4.2 recipe.

Batch 128, momentum 0.9, weight decay 1e-4, lr 0.1 /10 at 32k and 48k, end at
64k; option-A shortcuts; trained on all 50k images, test error reported.
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar10('cifar_resnet56')
