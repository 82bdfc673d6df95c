"""ResNet-110 on CIFAR-10 (Table 6), the paper's section 4.2 recipe.

Warm-up as the paper's ResNet-110: lr 0.01 until the training error is below
80% (about 400 iterations), then 0.1, /10 at 32k and 48k, end at 64k.
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.with_warmup(config_lib.cifar10('cifar_resnet110'))
