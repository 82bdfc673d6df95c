r"""ResNet-18 on ImageNet (Table 2, Fig. 4 right): option A, as Table 2.

The recipe, views and test protocols are `config_lib.imagenet`'s (section 3.4):
batch 256, lr 0.1 /10 when the error on 10k held-out training images
plateaus, up to 600k iterations; at the end, center, 10-crop and multi-scale
testing on the 50k validation images. Needs TFDS imagenet2012 prepared once
(docs/reproducing.md).

    python -m resnet_jax.main --config=configs/imagenet_r18.py \
        --workdir=runs/imagenet_r18 --config.input.data_dir=DIR
    python -m resnet_jax.main --config=configs/imagenet_r18.py \
        --workdir=runs/imagenet_r18 --config.input.data_dir=DIR \
        --mode=evaluate --config.eval.protocol=ten_crop

Expect (the paper, validation error): 27.88% top-1, 10-crop (Table 2), about
plain-18's, but converging faster (Fig. 4).
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet18')
  config.model_options.shortcut = 'A'
  return config
