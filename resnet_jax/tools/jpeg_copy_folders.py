r"""The same CIFAR-10 images twice, as two image folders: their official
pixels and their JPEG copies, to train and test on either.

    python -m resnet_jax.tools.jpeg_copy_folders --out=FOLDERS --data_dir=DIR \
        --train_batches=B/data_batch_1,B/data_batch_2,B/data_batch_3,B/data_batch_4,B/data_batch_5 \
        --test_batch=B/test_batch

writes `FOLDERS/official/{train,val}/<class>/<n>.png` (the release's pixels,
whole or its leading images when a file is cut short: `cifar_release` reads
them) and `FOLDERS/jpeg/...` (each image's copy in `--dataset`, the nearest
image of its class in the same split), PNG so that both keep their pixels
exactly, and `FOLDERS/pairs.json` (how many images, how far the copies are).
Each folder is a dataset for `--config.input.dataset=folder
--config.input.data_dir=FOLDERS/official` (or `/jpeg`) with the CIFAR
configs; scoring one folder's net on the other folder gives the cost of the
copy on each side (docs/reproducing.md).
"""

import json
import os

import numpy as np
import PIL.Image
from absl import flags, logging

from resnet_jax import cli
from resnet_jax.tools import cifar_release

FLAGS = flags.FLAGS
# Defined only when this module runs as the command line (see jpeg_copy_gap).
if __name__ == '__main__':
  flags.DEFINE_string('out', None, 'The folders are written under this directory.')
  flags.DEFINE_list('train_batches', [], "The release's data_batch_* files (the train split).")
  flags.DEFINE_string('test_batch', None, "The release's test_batch file (the val split).")
  flags.DEFINE_string('dataset', 'cifar10_jpeg', 'The TFDS JPEG copy of CIFAR-10.')
  flags.DEFINE_string('data_dir', None, 'TFDS data directory (None: TFDS default).')

# The folder dataset's split names, and the TFDS split each is paired in.
SPLITS = {'train': 'train', 'val': 'test'}


def write_folder(root: str, images, labels) -> None:
  """`images` as `root/<class name>/<n>.png`, n their index."""
  for n, (image, label) in enumerate(zip(images, labels)):
    directory = os.path.join(root, cifar_release.CLASS_NAMES[label])
    os.makedirs(directory, exist_ok=True)
    PIL.Image.fromarray(image).save(os.path.join(directory, f'{n:05d}.png'))


def write_pair(out: str, split: str, images, labels, copies) -> None:
  """One split in both folders: official pixels and their copies."""
  write_folder(os.path.join(out, 'official', split), images, labels)
  write_folder(os.path.join(out, 'jpeg', split), copies, labels)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.out or not FLAGS.test_batch:
    cli.fail('--out and --test_batch are required (and --train_batches for a train split)')
  files = {'train': FLAGS.train_batches, 'val': [FLAGS.test_batch]}
  summary = {'dataset': FLAGS.dataset}
  for split, paths in files.items():
    if not paths:
      continue
    images, labels = cifar_release.read_batches(paths)
    copies, copy_labels = cifar_release.load_copies(FLAGS.dataset, SPLITS[split], FLAGS.data_dir)
    paired, distance = cifar_release.pair_with_copies(images, labels, copies, copy_labels)
    write_pair(FLAGS.out, split, images, labels, paired)
    summary[split] = {
      'images': int(len(labels)),
      'per_class': np.bincount(labels, minlength=10).tolist(),
      'pair_distance_median': round(float(np.median(distance)), 2),
      'pair_distance_max': round(float(distance.max()), 2),
    }
    print(
      f'{split}: {len(labels)} images and their copies (pixel distance median '
      f'{summary[split]["pair_distance_median"]}/255, max {summary[split]["pair_distance_max"]})'
    )
  with open(os.path.join(FLAGS.out, 'pairs.json'), 'w') as f:
    json.dump(summary, f, indent=1)


if __name__ == '__main__':
  cli.run(main)
