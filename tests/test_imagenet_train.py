"""The ImageNet path of the loop on real images (imagenette224), end to end.

Small: 32-pixel crops of a tiny subset, so it runs in seconds on a CPU. Skips
when ../shared/data/tfds/imagenette224 is absent.
"""

import json
import os

import jax
import numpy as np
import pytest

from resnet_jax import config_lib, data, distributed, evaluation, experiment
from resnet_jax.training import loop
from resnet_jax.training import step as step_lib

from helpers import DATA_DIR

pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    not os.path.isdir(os.path.join(DATA_DIR, 'imagenette224')),
    reason='../shared/data/tfds/imagenette224 is not here',
  ),
]


def small_config():
  """ResNet-18 (option A) on imagenette at a 32-pixel scale of the paper's views."""
  config = config_lib.imagenette('resnet18')
  config.model_options.shortcut = 'A'
  config.input.data_dir = DATA_DIR
  config.input.batch_size = 16
  config.input.image_size = 32
  config.input.scale_range = (37, 69)  # 256/224 and 480/224 of the crop.
  config.input.num_workers = 0
  config.input.holdout_validation = False
  config.input.eval_split = 'validation[:21]'  # Not a multiple of any batch.
  config.input.eval_batch_size = 24
  config.eval.resize_size = 37
  config.eval.crop_size = 32
  config.eval.scales = (32, 37, 55)
  config.schedule.kind = 'piecewise'
  config.schedule.total_steps = 3
  config.schedule.boundaries = (2,)
  config.log_every_steps = 1
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  return config


def test_a_few_steps_on_imagenette_lower_the_loss():
  config = small_config()
  config.schedule.reference_batch_size = None  # lr 0.1 at batch 16: a quick descent.
  dataset = data.create(config)
  trainer = step_lib.Trainer(
    config, experiment.model_from_config(config), distributed.make_mesh(), dataset
  )
  batch = next(iter(dataset.train_batches(16, 0, 0, 1)))
  assert batch['image'].shape == (16, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert 20 < batch['image'].mean() < 235  # Real pixels.
  batch = trainer.to_global(batch)
  state = trainer.init_fn(jax.device_put(dataset.normalization(), trainer.replicated))
  losses = []
  for _ in range(8):
    state, metrics = trainer.train_fn(state, batch, {})
    losses.append(float(metrics['train_loss']))
  assert np.mean(losses[-3:]) < 0.7 * losses[0], losses


def test_imagenette_trains_and_scores_every_protocol(tmp_path):
  config = small_config()
  loop.train_and_evaluate(config, str(tmp_path))
  saved = json.load(open(tmp_path / 'eval.json'))
  assert saved['step'] == 3
  assert set(saved['protocols']) == {'center', 'ten_crop', 'multi_scale'}
  for result in saved['protocols'].values():
    assert result['count'] == 21 and result['split'] == 'validation'
    assert 0 <= result['top5_error'] <= result['top1_error'] <= 1
  # Evaluate mode on the checkpoint reproduces the end-of-training numbers.
  config.eval.protocol = 'ten_crop'
  again = evaluation.evaluate_workdir(config, str(tmp_path))
  assert again['top1_error'] == pytest.approx(saved['protocols']['ten_crop']['top1_error'])
  assert again['loss'] == pytest.approx(saved['protocols']['ten_crop']['loss'], rel=1e-5)
