r"""ResNet-20 on CIFAR-10 (Table 6, Fig. 6 middle): the section 4.2 recipe.

Batch 128, momentum 0.9, weight decay 1e-4, lr 0.1 /10 at 32k and 48k, end at
64k; option-A shortcuts; trained on all 50k images, test error reported.

    python -m resnet_jax.main --config=configs/cifar10_resnet20.py \
        --workdir=runs/cifar10_resnet20 --config.input.data_dir=DIR

Offline: add --config.input.dataset=cifar10_jpeg (the local JPEG copy of
CIFAR-10) and pass its TFDS data directory with --config.input.data_dir or
TFDS_DATA_DIR.

Expect: 8.75% test error in the paper (Table 6; 0.27M parameters), on the
official pixels. Measured here on the JPEG copy cifar10_jpeg: 12.29% (the
whole recipe, results/cifar10_resnet20_64k), about 2 points of it from
testing on JPEG copies (docs/reproducing.md). 64k iterations at batch 128
(about 164 epochs).

Speed: the train step at 433-448 images/s on a 2-core CPU (AMD EPYC with
AVX-512, 2 CPU devices, python -m resnet_jax.tools.benchmark, 2026-12-06):
the 64k iterations take about 5.1-5.3 hours there, evaluations apart.

Measured here, on a 2-core CPU with the schedule compressed to 2,000 iterations
(lr /10 at 1,000 and 1,500): 26.43% (docs/reproducing.md).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar10('cifar_resnet20')
