r"""ResNet-56 on CIFAR-10 (Table 6, Fig. 6 middle): the section 4.2 recipe.

Batch 128, momentum 0.9, weight decay 1e-4, lr 0.1 /10 at 32k and 48k, end at
64k; option-A shortcuts; trained on all 50k images, test error reported.

    python -m resnet_jax.main --config=configs/cifar10_resnet56.py \
        --workdir=runs/cifar10_resnet56 --config.input.data_dir=DIR

Offline: add --config.input.dataset=cifar10_jpeg (the local JPEG copy of
CIFAR-10) and pass its TFDS data directory with --config.input.data_dir or
TFDS_DATA_DIR.

Expect: 6.97% test error in the paper (Table 6; 0.85M parameters), on the official
pixels; on the JPEG copy cifar10_jpeg expect more (about 2 points more for
ResNet-20: docs/reproducing.md). 64k iterations at batch 128 (about 164 epochs).

Speed: the train step at 132-146 images/s on a 2-core CPU (AMD EPYC with
AVX-512, 2 CPU devices, python -m resnet_jax.tools.benchmark, 2026-12-06):
the 64k iterations take about 16-17 hours there, evaluations apart.

At lr 0.1 from the first step the loss spikes and sits at chance for tens of
iterations before it recovers, here and in an independent PyTorch reproduction:
a property of the recipe (docs/reproducing.md).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar10('cifar_resnet56')
