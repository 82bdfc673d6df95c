r"""Plain-20 on CIFAR-10 (Fig. 6, left), the paper's section 4.2 recipe.

The same stack as ResNet-20 with no shortcuts: batch 128, momentum 0.9, weight
decay 1e-4, lr 0.1 /10 at 32k and 48k, end at 64k.

    python -m resnet_jax.main --config=configs/cifar10_plain20.py \
        --workdir=runs/cifar10_plain20 --config.input.data_dir=DIR

Offline: add --config.input.dataset=cifar10_jpeg (the local JPEG copy of
CIFAR-10) and pass its TFDS data directory with --config.input.data_dir or
TFDS_DATA_DIR.

Expect: no table number in the paper; Fig. 6 (left) shows deeper plain nets
with higher training error (plain-20, 32, 44, 56: the degradation problem). 64k
iterations at batch 128 (about 164 epochs).

Measured here after 600 iterations on a 2-core CPU (lr /10 at 400 and 500):
45.70% test error, against ResNet-20's 39.79% (docs/research_api.md).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar10('cifar_plain20')
