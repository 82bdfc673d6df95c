"""Checkpoints written by earlier versions keep restoring: a tiny ResNet-20
workdir saved at step 2 (`goldens/workdir_tiny`, with the logits it gave on
eight images) is loaded for inference and resumed for training."""

import os
import shutil

import numpy as np

from resnet_jax import trained_workdir
from resnet_jax.training import loop

from helpers import ROOT, tiny_config, tiny_splits

GOLDEN = os.path.join(ROOT, 'tests', 'goldens', 'workdir_tiny')


def golden_config():
  """The config the golden workdir trained with (it stopped at step 2 of 4)."""
  config = tiny_config(total_steps=4, boundaries=(3,))
  config.checkpoint_every_steps = config.eval_every_steps = 2
  config.keep_checkpoints = 1
  return config


def test_a_saved_workdir_loads_and_predicts_as_when_it_was_saved():
  want = np.load(GOLDEN + '_logits.npz')
  loaded = trained_workdir.load_workdir(GOLDEN)
  assert loaded.step == 2 and loaded.model.num_classes == 10
  images = want['images'].astype(np.float32)
  x = (images - np.asarray(loaded.norm['mean'])) / np.asarray(loaded.norm['std'])
  logits = loaded.model.apply(loaded.variables, x, train=False)
  np.testing.assert_allclose(np.asarray(logits), want['logits'], rtol=1e-5, atol=1e-5)


def test_a_saved_workdir_resumes_training(tmp_path, capsys):
  workdir = tmp_path / 'resumed'
  shutil.copytree(GOLDEN, workdir)
  loop.train_and_evaluate(golden_config(), str(workdir), data=tiny_splits())
  assert 'Resumed from step 2' in capsys.readouterr().out
  assert trained_workdir.load_workdir(str(workdir)).step == 4
