r"""Plain-34 on ImageNet (Tables 2-3, Fig. 4 left): the degradation problem.

The recipe, views and test protocols are `config_lib.imagenet`'s (section 3.4):
batch 256, lr 0.1 /10 when the error on 10k held-out training images
plateaus, up to 600k iterations; at the end, center, 10-crop and multi-scale
testing on the 50k validation images. Needs TFDS imagenet2012 prepared once
(docs/reproducing.md).

    python -m resnet_jax.main --config=configs/imagenet_plain34.py \
        --workdir=runs/imagenet_plain34 --config.input.data_dir=DIR
    python -m resnet_jax.main --config=configs/imagenet_plain34.py \
        --workdir=runs/imagenet_plain34 --config.input.data_dir=DIR \
        --mode=evaluate --config.eval.protocol=ten_crop

Expect (the paper, validation error): 28.54% top-1 / 10.02% top-5, 10-crop
(Tables 2-3): worse than plain-18, with higher training error throughout (Fig.
4 left).
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('plain34')
  return config
