r"""ResNet-20 on 10,000 CIFAR-10 training images for 30 epochs: the base of the
large-batch check (resnet_jax.tools.recipe_study --study=cifar10_large_batch).

The paper's CIFAR recipe (section 4.2, `config_lib.cifar10`: SGD with momentum
0.9, weight decay 1e-4, 4-pixel padding + random 32 crop + flip, per-pixel
mean, option-A shortcuts) at batch 64 with the linear rule from the paper's
lr 0.1 at batch 128 (lr 0.05), on the first 10,000 training images for 4,800
iterations (30.7 epochs), lr /10 at 50% and 75% of them as the paper's 32k
and 48k of 64k. Test error on the whole test split (10,000 images).

The budget is what makes the check meaningful on a CPU: enough epochs that
batch 512 takes 600 updates (the imagenette study's 8.7 epochs left it 160),
with a 5-epoch warm-up as Goyal et al.'s, and short enough that a run takes
about a quarter of an hour on a 2-core CPU.

    python -m resnet_jax.main --config=configs/study_cifar10_r20.py \
        --workdir=runs/large_batch/paper --config.input.data_dir=DIR

Offline: add --config.input.dataset=cifar10_jpeg (the local JPEG copy).

Expect: far from the paper's 8.75% by design (a fifth of the images, a
fifth of the epochs); the study compares batch sizes at this one budget.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.cifar10('cifar_resnet20')
  config.input.train_split = 'train[:10000]'
  config.input.batch_size = 64
  config.schedule.reference_batch_size = 128  # lr 0.1 x 64 / 128 = 0.05.
  config.schedule.total_steps = 4_800
  config.schedule.boundaries = (2_400, 3_600)
  config.log_every_steps = 80
  config.eval_every_steps = 1_200
  config.checkpoint_every_steps = 400
  return config
