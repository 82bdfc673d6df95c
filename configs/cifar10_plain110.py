"""Plain-110 on CIFAR-10 (Fig. 6, left; the paper reports over 60% error).

The paper's section 4.2 recipe. The paper is silent on a warm-up for plain-110;
it has ResNet-110's depth, so it gets ResNet-110's warm-up rule here.
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.with_warmup(config_lib.cifar10('cifar_plain110'))
