r"""Plain-110 on CIFAR-10 (Fig. 6, left; the paper reports over 60% error).

The paper's section 4.2 recipe. The paper is silent on a warm-up for plain-110;
it has ResNet-110's depth, so it gets ResNet-110's warm-up rule here.

    python -m resnet_jax.main --config=configs/cifar10_plain110.py \
        --workdir=runs/cifar10_plain110 --config.input.data_dir=DIR

Offline: add --config.input.dataset=cifar10_jpeg (the local JPEG copy of
CIFAR-10) and pass its TFDS data directory with --config.input.data_dir or
TFDS_DATA_DIR.

Expect: over 60% error in the paper (section 4.2; not plotted in Fig. 6). 64k
iterations at batch 128 (about 164 epochs).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.with_warmup(config_lib.cifar10('cifar_plain110'))
