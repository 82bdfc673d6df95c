"""The committed pretrained CIFAR-10 ResNet-20 (`results/cifar10_resnet20_64k`,
the paper's full recipe): it loads through the public API at its final step,
its eval.json holds the score of all 10,000 test images, and it scores the
first 1,000 test images of the local `cifar10_jpeg` as it did when committed
(skipped without that dataset)."""

import json
import os

import numpy as np
import pytest

import resnet_jax

from helpers import DATA_DIR, ROOT, has_dataset

WORKDIR = os.path.join(ROOT, 'results', 'cifar10_resnet20_64k')
FINAL_STEP = 64_000
# Measured when the weights were committed (the workdir's README): wrong
# answers among the test split's first 1,000 images, center view.
FIRST_1000_WRONG = 140


def test_the_committed_weights_are_the_final_step_and_scored():
  loaded = resnet_jax.load_workdir(WORKDIR)
  assert loaded.step == FINAL_STEP
  assert loaded.model.num_classes == 10
  with open(os.path.join(WORKDIR, 'eval.json')) as f:
    scored = json.load(f)
  assert scored['step'] == FINAL_STEP
  assert scored['protocols']['center']['count'] == 10_000


@pytest.mark.skipif(not has_dataset('cifar10_jpeg'), reason='needs the local cifar10_jpeg')
def test_scores_1000_test_images_as_when_committed():
  import tensorflow_datasets as tfds

  source = tfds.data_source('cifar10_jpeg', split='test[:1000]', data_dir=DATA_DIR)
  examples = [source[i] for i in range(len(source))]
  images = np.stack([e['image'] for e in examples])
  labels = np.array([e['label'] for e in examples])
  predictor = resnet_jax.Predictor.from_workdir(WORKDIR, batch_size=200)
  wrong = int((predictor.predict(images).argmax(1) != labels).sum())
  # Another CPU's convolution kernels round differently: an image or two on
  # the decision boundary may flip.
  assert abs(wrong - FIRST_1000_WRONG) <= 2, wrong
