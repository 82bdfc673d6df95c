r"""ResNet-1202 on CIFAR-10 (Table 6, Fig. 6 right): the section 4.2 recipe.

Warm-up as the paper's ResNet-110: lr 0.01 until the training error is below
80% (about 400 iterations), then 0.1, /10 at 32k and 48k, end at 64k.

    python -m resnet_jax.main --config=configs/cifar10_resnet1202.py \
        --workdir=runs/cifar10_resnet1202 --config.input.data_dir=DIR

Offline: add --config.input.dataset=cifar10_jpeg (the local JPEG copy of
CIFAR-10) and pass its TFDS data directory with --config.input.data_dir or
TFDS_DATA_DIR.

Expect: 7.93% test error in the paper (Table 6; 19.4M parameters), worse than
ResNet-110 although it trains below 0.1% training error (Fig. 6 right:
overfitting), on the official pixels; on the JPEG copy cifar10_jpeg expect
more (docs/reproducing.md). 64k iterations at batch 128; a train step took
50.9 s on a 2-core CPU (docs/speed.md), so train it on an accelerator.
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.with_warmup(config_lib.cifar10('cifar_resnet1202'))
