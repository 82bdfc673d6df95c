r"""ResNet-34 B on ImageNet (Tables 3-4): projections where dimensions change.

The recipe, views and test protocols are `config_lib.imagenet`'s (section 3.4):
batch 256, lr 0.1 /10 when the error on 10k held-out training images
plateaus, up to 600k iterations; at the end, center, 10-crop and multi-scale
testing on the 50k validation images. Needs TFDS imagenet2012 prepared once
(docs/reproducing.md).

    python -m resnet_jax.main --config=configs/imagenet_r34_b.py \
        --workdir=runs/imagenet_r34_b --config.input.data_dir=DIR
    python -m resnet_jax.main --config=configs/imagenet_r34_b.py \
        --workdir=runs/imagenet_r34_b --config.input.data_dir=DIR \
        --mode=evaluate --config.eval.protocol=multi_scale

Expect (the paper, validation error): 24.52% top-1 / 7.46% top-5, 10-crop
(Table 3); 21.84% / 5.71% single-model multi-scale (Table 4).
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet34')
  config.model_options.shortcut = 'B'
  return config
