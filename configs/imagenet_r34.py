r"""ResNet-34 A on ImageNet (Tables 2-3, Fig. 4 right): zero-padding shortcuts,
the same parameters and FLOPs as plain-34.

The recipe, views and test protocols are `config_lib.imagenet`'s (section 3.4):
batch 256, lr 0.1 /10 when the error on 10k held-out training images
plateaus, up to 600k iterations; at the end, center, 10-crop and multi-scale
testing on the 50k validation images. Needs TFDS imagenet2012 prepared once
(docs/reproducing.md).

    python -m resnet_jax.main --config=configs/imagenet_r34.py \
        --workdir=runs/imagenet_r34 --config.input.data_dir=DIR
    python -m resnet_jax.main --config=configs/imagenet_r34.py \
        --workdir=runs/imagenet_r34 --config.input.data_dir=DIR \
        --mode=evaluate --config.eval.protocol=ten_crop

Expect (the paper, validation error): 25.03% top-1 / 7.76% top-5, 10-crop
(Tables 2-3): better than ResNet-18 and plain-34.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet34')
  config.model_options.shortcut = 'A'
  return config
