"""Tests of `tools.jpeg_copy_gap`: the error counts of each official image
and its copy."""

import numpy as np

from resnet_jax.tools import jpeg_copy_gap


class _ByPixel:
  """Predicts class 1 for images whose first pixel is bright, else class 0."""

  def predict(self, images):
    bright = images[:, 0, 0, 0] > 127
    return np.stack([~bright, bright], axis=1).astype(np.float32)


def test_gap_counts_the_outcomes_of_each_pair():
  images = np.zeros((4, 32, 32, 3), np.uint8)
  copies = images.copy()
  images[[0, 1], 0, 0, 0] = 255  # Official: classes 1, 1, 0, 0.
  copies[[0, 2], 0, 0, 0] = 255  # Copies: 1, 0, 1, 0.
  labels = np.array([1, 1, 0, 0])
  result = jpeg_copy_gap.gap(_ByPixel(), images, copies, labels)
  assert result == {
    'images': 4,
    'error_official': 0.0,
    'error_jpeg_copy': 50.0,
    'right_on_official_only': 2,
    'right_on_copy_only': 0,
  }
