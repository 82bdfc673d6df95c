"""Tests of `tools.cifar_release`: the official batch file read whole and cut
short, and each image paired with its own copy."""

import pickle

import numpy as np
import pytest

from resnet_jax import errors
from resnet_jax.tools import cifar_release


def _batch_file(tmp_path, images, labels, protocol=3, name='test_batch'):
  """`images` (N, 32, 32, 3) written as the release writes a batch: planar
  R, G, B rows of 3,072 bytes and a list of labels."""
  pixels = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))
  batch = {b'batch_label': b'testing batch 1 of 1', b'labels': [int(x) for x in labels]}
  batch[b'data'] = pixels
  path = tmp_path / name
  path.write_bytes(pickle.dumps(batch, protocol=protocol))
  return path


@pytest.fixture(scope='module')
def release():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (10_000, 32, 32, 3), np.uint8), rng.integers(0, 10, 10_000)


def test_reads_a_whole_batch_file(tmp_path, release):
  images, labels = release
  read_images, read_labels = cifar_release.read_batch(_batch_file(tmp_path, images, labels))
  np.testing.assert_array_equal(read_images, images)
  np.testing.assert_array_equal(read_labels, labels)


def test_reads_the_leading_images_of_a_file_cut_short(tmp_path, release):
  images, labels = release
  path = _batch_file(tmp_path, images, labels)
  blob = path.read_bytes()
  pixels_at = blob.find(b'B' + (10_000 * 3072).to_bytes(4, 'little')) + 5
  path.write_bytes(blob[: pixels_at + 7 * 3072 + 100])  # Seven images and part of an eighth.
  read_images, read_labels = cifar_release.read_batch(path)
  np.testing.assert_array_equal(read_images, images[:7])
  np.testing.assert_array_equal(read_labels, labels[:7])


def test_a_file_without_pixels_is_one_error(tmp_path):
  path = tmp_path / 'test_batch'
  path.write_bytes(b'not a batch')
  with pytest.raises(errors.DataError, match='not a CIFAR-10 Python batch file'):
    cifar_release.read_batch(path)


def test_pairs_each_image_with_its_copy_of_the_same_class():
  rng = np.random.default_rng(1)
  copies = rng.integers(10, 246, (60, 32, 32, 3)).astype(np.uint8)
  copy_labels = np.arange(60) % 3
  order = rng.permutation(60)[:20]
  noise = rng.integers(-4, 5, (20, 32, 32, 3))
  images = (copies[order] + noise).astype(np.uint8)
  paired, distance = cifar_release.pair_with_copies(images, copy_labels[order], copies, copy_labels)
  np.testing.assert_array_equal(paired, copies[order])
  np.testing.assert_allclose(distance, np.abs(noise).mean(axis=(1, 2, 3)))


def test_reads_several_batch_files_in_order(tmp_path, release):
  images, labels = release
  first = _batch_file(tmp_path, images[:5], labels[:5], name='data_batch_1')
  second = _batch_file(tmp_path, images[5:8], labels[5:8], name='data_batch_2')
  read_images, read_labels = cifar_release.read_batches([first, second])
  np.testing.assert_array_equal(read_images, images[:8])
  np.testing.assert_array_equal(read_labels, labels[:8])


def test_pairing_is_the_exhaustive_nearest_copy():
  """The block-mean bound only prunes: the pairs are those of comparing
  every copy's pixels."""
  rng = np.random.default_rng(2)
  copies = rng.integers(0, 256, (300, 32, 32, 3)).astype(np.uint8)
  copy_labels = np.arange(300) % 2
  images = rng.integers(0, 256, (12, 32, 32, 3)).astype(np.uint8)
  labels = np.arange(12) % 2
  paired, distance = cifar_release.pair_with_copies(images, labels, copies, copy_labels)
  for image, label, copy, d in zip(images, labels, paired, distance):
    pool = copies[copy_labels == label].astype(np.int16)
    gaps = np.abs(pool - image).mean(axis=(1, 2, 3))
    np.testing.assert_array_equal(copy, pool[gaps.argmin()])
    assert d == pytest.approx(gaps.min())
