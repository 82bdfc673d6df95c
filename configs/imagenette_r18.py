r"""ResNet-18 on imagenette224, the 10-class local ImageNet proxy (Table 2's
ordering at the paper's resolution, on an accelerator).

The ImageNet recipe and views with a schedule for 9k images
(`config_lib.imagenette`: 6,000 steps at batch 256, about 170 epochs; the
plateau rule watches 500 held-out training images). Pass its TFDS data
directory with --config.input.data_dir or TFDS_DATA_DIR.

    python -m resnet_jax.main --config=configs/imagenette_r18.py \
        --workdir=runs/imagenette_r18 --config.input.data_dir=DIR

Expect: the paper's claim is the ordering (Table 2, Fig. 4): plain-34 worse
than plain-18, ResNet-34 better than ResNet-18.

Measured here at half resolution (112 crops, 800 iterations at batch 64, on a
2-core CPU; docs/reproducing.md), on the 3,925 validation images: 31.08% top-1
center crop, 29.89% 10-crop, 34.29% multi-scale. Not run at 224 yet.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenette('resnet18')
  config.model_options.shortcut = 'A'
  return config
