r"""ResNet-110 on CIFAR-10 (Table 6), the paper's section 4.2 recipe.

Warm-up as the paper's ResNet-110: lr 0.01 until the training error is below
80% (about 400 iterations), then 0.1, /10 at 32k and 48k, end at 64k.

    python -m resnet_jax.main --config=configs/cifar10_resnet110.py \
        --workdir=runs/cifar10_resnet110 --config.input.data_dir=DIR

Offline: add --config.input.dataset=cifar10_jpeg (the local JPEG copy of
CIFAR-10) and pass its TFDS data directory with --config.input.data_dir or
TFDS_DATA_DIR.

Expect: 6.43% test error in the paper (best of 5; 6.61 +- 0.16; Table 6, 1.7M
parameters), on the official pixels; on the JPEG copy cifar10_jpeg expect more
(about 2 points more for ResNet-20: docs/reproducing.md). 64k iterations at
batch 128.

Table 6's 5 runs, with their best and mean +- std (the launcher reads the JPEG
copy cifar10_jpeg from DIR by default):

    python -m resnet_jax.tools.cifar_table --nets=resnet110 --seeds=0,1,2,3,4 \
        --data_dir=DIR --root=runs/table6 --results=results/table6
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.with_warmup(config_lib.cifar10('cifar_resnet110'))
