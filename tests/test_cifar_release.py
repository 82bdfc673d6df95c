"""Tests of `tools.jpeg_copy_gap`: the official batch file read whole and cut
short, each image paired with its own copy, and the paired error counts."""

import pickle

import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax.tools import jpeg_copy_gap


def _batch_file(tmp_path, images, labels, protocol=3):
  """`images` (N, 32, 32, 3) written as the release writes a batch: planar
  R, G, B rows of 3,072 bytes and a list of labels."""
  pixels = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))
  batch = {b'batch_label': b'testing batch 1 of 1', b'labels': [int(x) for x in labels]}
  batch[b'data'] = pixels
  path = tmp_path / 'test_batch'
  path.write_bytes(pickle.dumps(batch, protocol=protocol))
  return path


@pytest.fixture(scope='module')
def release():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (10_000, 32, 32, 3), np.uint8), rng.integers(0, 10, 10_000)


def test_reads_a_whole_batch_file(tmp_path, release):
  images, labels = release
  read_images, read_labels = jpeg_copy_gap.read_test_batch(_batch_file(tmp_path, images, labels))
  np.testing.assert_array_equal(read_images, images)
  np.testing.assert_array_equal(read_labels, labels)


def test_reads_the_leading_images_of_a_file_cut_short(tmp_path, release):
  images, labels = release
  path = _batch_file(tmp_path, images, labels)
  blob = path.read_bytes()
  pixels_at = blob.find(b'B' + (10_000 * 3072).to_bytes(4, 'little')) + 5
  path.write_bytes(blob[: pixels_at + 7 * 3072 + 100])  # Seven images and part of an eighth.
  read_images, read_labels = jpeg_copy_gap.read_test_batch(path)
  np.testing.assert_array_equal(read_images, images[:7])
  np.testing.assert_array_equal(read_labels, labels[:7])


def test_a_file_without_pixels_is_one_error(tmp_path):
  path = tmp_path / 'test_batch'
  path.write_bytes(b'not a batch')
  with pytest.raises(errors.DataError, match='not a CIFAR-10 Python batch file'):
    jpeg_copy_gap.read_test_batch(path)


def test_pairs_each_image_with_its_copy_of_the_same_class():
  rng = np.random.default_rng(1)
  copies = rng.integers(10, 246, (60, 32, 32, 3)).astype(np.uint8)
  copy_labels = np.arange(60) % 3
  order = rng.permutation(60)[:20]
  noise = rng.integers(-4, 5, (20, 32, 32, 3))
  images = (copies[order] + noise).astype(np.uint8)
  paired, distance = jpeg_copy_gap.pair_with_copies(images, copy_labels[order], copies, copy_labels)
  np.testing.assert_array_equal(paired, copies[order])
  np.testing.assert_allclose(distance, np.abs(noise).mean(axis=(1, 2, 3)))


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
