r"""ResNet-50 on ImageNet (Tables 3-4): bottlenecks, option B.

The recipe, views and test protocols are `config_lib.imagenet`'s (section 3.4):
batch 256, lr 0.1 /10 when the error on 10k held-out training images
plateaus, up to 600k iterations; at the end, center, 10-crop and multi-scale
testing on the 50k validation images. Needs TFDS imagenet2012 prepared once
(docs/reproducing.md).

    python -m resnet_jax.main --config=configs/imagenet_r50.py \
        --workdir=runs/imagenet_r50 --config.input.data_dir=DIR
    python -m resnet_jax.main --config=configs/imagenet_r50.py \
        --workdir=runs/imagenet_r50 --config.input.data_dir=DIR \
        --mode=evaluate --config.eval.protocol=multi_scale

Expect (the paper, validation error): 22.85% top-1 / 6.71% top-5, 10-crop
(Table 3); 20.74% / 5.25% single-model multi-scale (Table 4).
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet50')
  config.model_options.shortcut = 'B'
  return config
