r"""ResNet-50 on imagenette224, the 10-class local ImageNet proxy (Tables 3-4's
ordering at the paper's resolution, on an accelerator).

The ImageNet recipe and views with a schedule for 9k images
(`config_lib.imagenette`: 6,000 steps at batch 256, about 170 epochs; the
plateau rule watches 500 held-out training images). Pass its TFDS data
directory with --config.input.data_dir or TFDS_DATA_DIR.

    python -m resnet_jax.main --config=configs/imagenette_r50.py \
        --workdir=runs/imagenette_r50 --config.input.data_dir=DIR

Expect: the paper's claim is the ordering (Tables 3-4): ResNet-50 better than
ResNet-34. Not run here yet.

Its input pipeline throughput on real JPEGs (docs/speed.md):

    python -m resnet_jax.tools.input_benchmark \
        --config=configs/imagenette_r50.py --config.input.data_dir=DIR
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenette('resnet50')
  config.model_options.shortcut = 'B'
  return config
