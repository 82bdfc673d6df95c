r"""ResNet-18 on imagenette224 at a CPU's budget: the base of the study of the
options beyond the paper's recipe (resnet_jax.tools.recipe_study).

The paper's ImageNet recipe (section 3.4, `config_lib.imagenette`) with
option-B shortcuts, every size scaled by 64/224: 64x64 crops of the image
with its shorter side in [73, 137] (the paper's 224 in [256, 480]), flips,
PCA lighting, per-channel normalisation; testing on the center 64 crop of the
image resized to 73 (the paper's 224 of 256), multi-scale at (64, 73, 110,
137, 183). Batch 64 with the linear rule (lr 0.1 x 64 / 256 = 0.025), SGD
with momentum 0.9, weight decay 1e-4; 1,280 iterations (8.7 epochs of the
9,469 training images), lr /10 at 50% and 75% of them (fixed steps: a
plateau cannot be seen in so few evaluations, so nothing is held out). The
whole validation split (3,925 images) is the test set, center crop.

The step count fits the budget, one run in about 10 minutes of a 2-core
CPU. Measured there (AMD EPYC with AVX-512, 2 CPU devices,
`python -m resnet_jax.tools.benchmark --config=configs/study_imagenette_r18.py`):
428 ms per train step, so 9-10 minutes for the steps plus start-up and the
4 evaluations; the study's table gives each run's wall time.

    python -m resnet_jax.main --config=configs/study_imagenette_r18.py \
        --workdir=runs/recipes/paper --config.input.data_dir=DIR

Expect: 29.83% top-1 error (29.35% with seed 1), measured on the 2-core
CPU above (results/imagenette_recipes, docs/recipes.md). Far from converged
by design: the study compares options at one equal budget, not at
convergence.
"""

from resnet_jax import config_lib


def get_config():
  config = config_lib.imagenette('resnet18')
  config.model_options.shortcut = 'B'
  config.input.image_size = 64
  config.input.scale_range = (73, 137)
  config.eval.resize_size = 73
  config.eval.crop_size = 64
  config.eval.scales = (64, 73, 110, 137, 183)
  config.input.batch_size = 64  # lr 0.025 by the linear rule (reference_batch_size 256).
  config.input.holdout_validation = False
  config.schedule.kind = 'piecewise'
  config.schedule.total_steps = 1_280
  config.schedule.boundaries = (640, 960)
  config.eval.protocol = 'center'
  config.eval.final_protocols = ('center',)
  config.log_every_steps = 40
  config.eval_every_steps = 320
  config.checkpoint_every_steps = 160
  return config
