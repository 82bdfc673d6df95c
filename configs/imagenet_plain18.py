r"""Plain-18 on ImageNet (Table 2, Fig. 4 left): no shortcuts.

The recipe, views and test protocols are `config_lib.imagenet`'s (section 3.4):
batch 256, lr 0.1 /10 when the error on 10k held-out training images
plateaus, up to 600k iterations; at the end, center, 10-crop and multi-scale
testing on the 50k validation images. Needs TFDS imagenet2012 prepared once
(docs/reproducing.md).

    python -m resnet_jax.main --config=configs/imagenet_plain18.py \
        --workdir=runs/imagenet_plain18 --config.input.data_dir=DIR
    python -m resnet_jax.main --config=configs/imagenet_plain18.py \
        --workdir=runs/imagenet_plain18 --config.input.data_dir=DIR \
        --mode=evaluate --config.eval.protocol=ten_crop

Expect (the paper, validation error): 27.94% top-1, 10-crop (Table 2).
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('plain18')
  return config
