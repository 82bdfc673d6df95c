"""Plain-34 on ImageNet (Tables 2-3, Fig. 4 left): the degradation problem.

Section 3.4's recipe (`config_lib.imagenet`): batch 256, SGD momentum 0.9,
weight decay 1e-4, lr 0.1 divided by 10 when the held-out error plateaus, up
to 600k iterations; shorter side in [256, 480], 224 crop, flip, PCA lighting.
Evaluate with `--mode=evaluate --config.eval.protocol=ten_crop` (or center,
multi_scale).
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('plain34')
  return config
