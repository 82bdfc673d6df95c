"""The official CIFAR-10 release's Python batch files, and each of their
images paired with its copy in a JPEG copy of CIFAR-10 (`cifar10_jpeg`).

A batch file (`data_batch_1` ... `data_batch_5`, `test_batch`) is a pickle of
uint8 pixels and labels; a copy cut short is read as far as it goes (its
leading images: the labels precede the pixels). The JPEG copies are stored in
another order, under other names, so each official image is paired with the
copy of its class nearest to it in pixels; the pairing distance (mean
absolute pixel difference, in 1/255) says how far the copy is from the
official pixels.
"""

import pickle
import struct

import numpy as np

from resnet_jax import errors

# The release's label names (batches.meta), in label order.
CLASS_NAMES = (
  'airplane',
  'automobile',
  'bird',
  'cat',
  'deer',
  'dog',
  'frog',
  'horse',
  'ship',
  'truck',
)
IMAGE_BYTES = 32 * 32 * 3
_FULL_SIZE = 10_000 * IMAGE_BYTES
# The pixels are one pickled string: BINSTRING (protocol 2 from Python 2, the
# release's own) or BINBYTES (a Python 3 re-pickle), with a 4-byte length.
_PIXEL_OPCODES = (b'T', b'B')
# Pairing compares 4x4-pixel block means first (a lower bound on the pixel
# distance), then the pixels of the closest candidates, this many at a time.
_BLOCK = 4
_CANDIDATES_PER_ROUND = 8


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
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


def read_batches(paths) -> tuple[np.ndarray, np.ndarray]:
  """The images and labels of several batch files, one after another."""
  parts = [read_batch(path) for path in paths]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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


def _block_means(images) -> np.ndarray:
  n, h, w, c = images.shape
  blocks = images.reshape(n, h // _BLOCK, _BLOCK, w // _BLOCK, _BLOCK, c)
  return blocks.mean(axis=(2, 4), dtype=np.float64).reshape(n, -1)


def _nearest(image, pool, pool_blocks) -> tuple[int, float]:
  """The index of the pool image nearest to `image` in mean absolute pixel
  difference, and that difference: exact, searched in order of the block-mean
  distance, which is never larger than the pixel distance."""
  image = image.astype(np.int16)
  bound = np.abs(pool_blocks - _block_means(image[None])).mean(axis=1)
  order = np.argsort(bound, kind='stable')
  best, best_distance = -1, np.inf
  for start in range(0, len(order), _CANDIDATES_PER_ROUND):
    if bound[order[start]] > best_distance:
      break
    chunk = order[start : start + _CANDIDATES_PER_ROUND]
    gaps = np.abs(pool[chunk] - image).mean(axis=(1, 2, 3))
    if gaps.min() < best_distance:
      best, best_distance = int(chunk[gaps.argmin()]), float(gaps.min())
  return best, best_distance


def pair_with_copies(images, labels, copies, copy_labels) -> tuple[np.ndarray, np.ndarray]:
  """(the nearest copy of each image among the copies of its class, and the
  mean absolute pixel difference of each pair)."""
  paired = np.empty_like(images)
  distance = np.empty(len(images))
  for label in np.unique(labels):
    pool = copies[copy_labels == label].astype(np.int16)
    if len(pool) == 0:
      raise errors.DataError(f'the JPEG copy has no image of class {label}')
    pool_blocks = _block_means(pool)
    for i in np.flatnonzero(labels == label):
      nearest, distance[i] = _nearest(images[i], pool, pool_blocks)
      paired[i] = pool[nearest]
  return paired, distance


def load_copies(dataset: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """A TFDS split's images and labels, decoded (the JPEG copies)."""
  import tensorflow_datasets as tfds  # Heavy import; only where data is read.

  from resnet_jax.data import catalog

  source = tfds.data_source(dataset, split=split, data_dir=catalog.tfds_root(data_dir))
  examples = [source[i] for i in range(len(source))]
  return np.stack([e['image'] for e in examples]), np.array([e['label'] for e in examples])
