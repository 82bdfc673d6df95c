r"""plain-18 on imagenette224, the 10-class local ImageNet proxy (Table 2's
ordering at the paper's resolution, on an accelerator).

The ImageNet recipe and views with a schedule for 9k images
(`config_lib.imagenette`: 6,000 steps at batch 256, about 170 epochs; the
plateau rule watches 500 held-out training images). Pass its TFDS data
directory with --config.input.data_dir or TFDS_DATA_DIR.

    python -m resnet_jax.main --config=configs/imagenette_plain18.py \
        --workdir=runs/imagenette_plain18 --config.input.data_dir=DIR

Expect: the paper's claim is the ordering (Table 2, Fig. 4): plain-34 worse
than plain-18, ResNet-34 better than ResNet-18. Not run here yet.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenette('plain18')
  return config
