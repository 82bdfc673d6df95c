"""Tests of `tools.jpeg_copy_folders`: both folders are datasets of the same
images and labels, pixels kept exactly."""

import os

import numpy as np

from resnet_jax.data import cifar, folder
from resnet_jax.tools import cifar_release, jpeg_copy_folders


def test_both_folders_read_back_as_the_same_labelled_images(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.array([0, 3, 3, 9, 0, 5])
  images = rng.integers(0, 256, (6, 32, 32, 3), np.uint8)
  copies = rng.integers(0, 256, (6, 32, 32, 3), np.uint8)
  for split in ('train', 'val'):
    jpeg_copy_folders.write_pair(str(tmp_path), split, images, labels, copies)
  for kind, expected in (('official', images), ('jpeg', copies)):
    index = folder.index(str(tmp_path / kind), False)
    assert list(index.class_names) == sorted(cifar_release.CLASS_NAMES[i] for i in set(labels))
    read = cifar.load_folder_split(index, 'val')
    # Each file is named after its image's index.
    order = [int(os.path.basename(path)[:-4]) for path in index.files['val']]
    assert sorted(order) == list(range(6))
    np.testing.assert_array_equal(read.images, expected[order])
    names = [index.class_names[label] for label in read.labels]
    assert names == [cifar_release.CLASS_NAMES[labels[n]] for n in order]
