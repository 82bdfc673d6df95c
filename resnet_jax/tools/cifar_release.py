r"""What a JPEG copy of CIFAR-10 costs a trained net: its error on official
CIFAR-10 test images beside its error on their JPEG copies.

    python -m resnet_jax.tools.jpeg_copy_gap --workdir=runs/r20 \
        --test_batch=cifar-10-batches-py/test_batch --data_dir=DIR --out=gap.json

`--test_batch` is the official release's Python test batch (a pickle of
uint8 pixels and labels); a copy cut short is read as far as it goes (its
leading images: the labels precede the pixels). Each official image is
paired with the JPEG image of the same class nearest to it in pixels in
`--dataset`'s test split (the JPEG copies are stored in another order, under
other names); both are scored with the workdir's center view. The pairing
distance (mean absolute pixel difference, in 1/255) says how far the copy
is from the official pixels.
"""

import json
import pickle
import struct

import numpy as np
from absl import flags, logging

from resnet_jax import cli, errors

FLAGS = flags.FLAGS
# Defined only when this module runs as the command line: imported as a
# library (by tests), it leaves --workdir and the others to the program
# that imports it.
if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A trained CIFAR workdir (its latest checkpoint).')
  flags.DEFINE_string('test_batch', None, "The official CIFAR-10 Python release's test_batch file.")
  flags.DEFINE_string('dataset', 'cifar10_jpeg', 'The TFDS JPEG copy of CIFAR-10.')
  flags.DEFINE_string('data_dir', None, 'TFDS data directory (None: TFDS default).')
  flags.DEFINE_string('out', None, 'Also write the figures to this JSON file.')
  flags.DEFINE_bool('ema', False, "Score the weights' moving average (runs with config.ema).")

IMAGE_BYTES = 32 * 32 * 3
_FULL_SIZE = 10_000 * IMAGE_BYTES
# The pixels are one pickled string: BINSTRING (protocol 2 from Python 2, the
# release's own) or BINBYTES (a Python 3 re-pickle), with a 4-byte length.
_PIXEL_OPCODES = (b'T', b'B')


def read_test_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 (N, 32, 32, 3) images, int (N,) labels) of an official batch file;
  N < 10,000 when the file is cut short."""
  with open(path, 'rb') as f:
    blob = f.read()
  try:
    batch = pickle.loads(blob, encoding='bytes')
    pixels, labels = np.asarray(batch[b'data'], np.uint8), np.asarray(batch[b'labels'])
  except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError):
    pixels, labels = _read_leading_images(blob, path)
  images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # Planes R, G, B -> HWC.
  return np.ascontiguousarray(images), labels[: len(images)]


def _read_leading_images(blob: bytes, path: str) -> tuple[np.ndarray, np.ndarray]:
  """The labels and the complete images of a batch file cut short."""
  at = blob.find(b'labels')
  end = blob.find(b'data', at)
  markers = [blob.find(op + struct.pack('<I', _FULL_SIZE)) for op in _PIXEL_OPCODES]
  pixel_at = max(markers)
  if at < 0 or end < 0 or pixel_at < 0:
    raise errors.DataError(f'{path} is not a CIFAR-10 Python batch file (no labels or pixels)')
  # The labels list: small ints (BININT1, b'K' then one byte) between marks
  # and appends, then the key of the pixels.
  segment = blob[at + len('labels') : end]
  labels = [segment[i + 1] for i in range(len(segment) - 1) if segment[i : i + 1] == b'K']
  labels = np.asarray(labels)
  begin = pixel_at + 5
  count = min((len(blob) - begin) // IMAGE_BYTES, len(labels))
  if count == 0:
    raise errors.DataError(f'{path} holds no complete image')
  return np.frombuffer(blob[begin : begin + count * IMAGE_BYTES], np.uint8), labels


def pair_with_copies(images, labels, copies, copy_labels) -> tuple[np.ndarray, np.ndarray]:
  """(the nearest copy of each image among the copies of its class, and the
  mean absolute pixel difference of each pair)."""
  paired = np.empty_like(images)
  distance = np.empty(len(images))
  for label in np.unique(labels):
    pool = copies[copy_labels == label].astype(np.int16)
    if len(pool) == 0:
      raise errors.DataError(f'the JPEG copy has no test image of class {label}')
    for i in np.flatnonzero(labels == label):
      gaps = np.abs(pool - images[i]).mean(axis=(1, 2, 3))
      paired[i], distance[i] = pool[gaps.argmin()], gaps.min()
  return paired, distance


def gap(predictor, images, copies, labels) -> dict:
  """Errors (%) on the official images and on their copies, and how the
  per-image outcomes differ."""
  right = predictor.predict(images).argmax(1) == labels
  right_copy = predictor.predict(copies).argmax(1) == labels
  return {
    'images': int(len(labels)),
    'error_official': round(100 * float(1 - right.mean()), 2),
    'error_jpeg_copy': round(100 * float(1 - right_copy.mean()), 2),
    'right_on_official_only': int((right & ~right_copy).sum()),
    'right_on_copy_only': int((~right & right_copy).sum()),
  }


def _load_copies(dataset: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds  # Heavy import; only where data is read.

  from resnet_jax.data import catalog

  source = tfds.data_source(dataset, split='test', data_dir=catalog.tfds_root(data_dir))
  examples = [source[i] for i in range(len(source))]
  return np.stack([e['image'] for e in examples]), np.array([e['label'] for e in examples])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir or not FLAGS.test_batch:
    cli.fail('--workdir and --test_batch are required')
  images, labels = read_test_batch(FLAGS.test_batch)
  copies, copy_labels = _load_copies(FLAGS.dataset, FLAGS.data_dir)
  paired, distance = pair_with_copies(images, labels, copies, copy_labels)
  from resnet_jax import prediction

  predictor = prediction.Predictor.from_workdir(FLAGS.workdir, batch_size=500, ema=FLAGS.ema)
  result = {
    'workdir': FLAGS.workdir,
    'step': int(predictor.step),
    **gap(predictor, images, paired, labels),
    'pair_distance_median': round(float(np.median(distance)), 2),
    'pair_distance_max': round(float(distance.max()), 2),
  }
  print(
    f'{result["images"]} official test images: error {result["error_official"]:.2f}% on them, '
    f'{result["error_jpeg_copy"]:.2f}% on their {FLAGS.dataset} copies '
    f'(right on the official only {result["right_on_official_only"]}, on the copy only '
    f'{result["right_on_copy_only"]}; pixel distance median {result["pair_distance_median"]}/255)'
  )
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  cli.run(main)
