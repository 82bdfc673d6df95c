r"""ResNet-152 on ImageNet (Tables 3-5): bottlenecks, option B; the paper's
best single model (19.38% top-1 / 4.49% top-5 multi-scale, Table 4).

The recipe, views and test protocols are `config_lib.imagenet`'s (section 3.4):
batch 256, lr 0.1 /10 when the error on 10k held-out training images
plateaus, up to 600k iterations; at the end, center, 10-crop and multi-scale
testing on the 50k validation images. Needs TFDS imagenet2012 prepared once
(docs/reproducing.md).

    python -m resnet_jax.main --config=configs/imagenet_r152.py \
        --workdir=runs/imagenet_r152 --config.input.data_dir=DIR
    python -m resnet_jax.main --config=configs/imagenet_r152.py \
        --workdir=runs/imagenet_r152 --config.input.data_dir=DIR \
        --mode=evaluate --config.eval.protocol=multi_scale

Expect (the paper, validation error): 21.43% top-1 / 5.71% top-5, 10-crop
(Table 3); 19.38% / 4.49% single-model multi-scale (Table 4). Table 5: an
ensemble of six models, two of them ResNet-152, 3.57% top-5 on the test set
(--config.eval.protocol=ensemble --config.eval.ensemble_workdirs=A,B,...).
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenet('resnet152')
  config.model_options.shortcut = 'B'
  return config
