"""CIFAR-10 input pipeline: TFDS data sources read with Grain, no TensorFlow.

CIFAR-10 fits in memory, so the split is decoded once (in parallel, by Grain)
into uint8 arrays. Training batches are drawn by a checkpointable Grain
iterator (per-epoch shuffles, deterministic given the seed, sharded per
process); the paper's augmentation (4-pixel zero padding, random 32x32 crop,
random horizontal flip) and the per-pixel mean subtraction run on the device
inside the compiled train step (`augment`, `normalize`), so the host only
gathers indices.

Works the same for TFDS `cifar10` and for `cifar10_jpeg` (same feature keys).
"""

import dataclasses
import os
import queue
import threading
from collections.abc import Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np

# Datasets this pipeline reads, with their test split and the size of the
# paper's held-out validation set (section 4.2: 45k/5k train/val).
DATASETS = {
    'cifar10': dict(num_classes=10, image_size=32, train_split='train',
                    test_split='test', num_train=50_000),
    'cifar10_jpeg': dict(num_classes=10, image_size=32, train_split='train',
                         test_split='test', num_train=50_000),
}
PAD = 4  # Section 4.2: 4 pixels padded on each side.


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One decoded split held in host memory."""
  images: np.ndarray  # (N, H, W, 3) uint8
  labels: np.ndarray  # (N,) int32

  def __len__(self):
    return len(self.labels)


def check_dataset(name: str, data_dir: str | None):
  """Fails fast, with the fix, if `name` cannot be read from `data_dir`."""
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; valid: {sorted(DATASETS)}. '
                     'Set --config.input.dataset.')
  if data_dir is not None and not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f'data_dir {data_dir!r} does not exist. Point --config.input.data_dir '
        'at a TFDS data directory (e.g. ../shared/data/tfds for cifar10_jpeg).')
  root = data_dir or os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))
  if not os.path.isdir(os.path.join(root, name)):
    hint = ('prepare it once with `pip install -e ".[prepare]" && tfds build '
            f'cifar10 --file_format=array_record --data_dir={root}`'
            if name == 'cifar10' else 'set --config.input.data_dir to the '
            'directory that holds it (../shared/data/tfds here)')
    raise FileNotFoundError(f'dataset {name!r} not found under {root!r}: {hint}.')


def load_split(name: str, split: str, data_dir: str | None,
               num_threads: int | None = None) -> ArraySplit:
  """Decodes a whole TFDS split into memory, reading it with Grain.

  Args:
    name: TFDS name ('cifar10' or 'cifar10_jpeg').
    split: TFDS split, slices allowed (e.g. 'train[:45000]').
    data_dir: TFDS data directory; None for TFDS's default.
    num_threads: Grain reader threads (JPEG decoding runs in them); None:
      one per CPU core, at most 16.

  Returns:
    The split's images (uint8, NHWC) and labels (int32), in stored order.
  """
  import tensorflow_datasets as tfds  # Heavy import; only where data is read.
  check_dataset(name, data_dir)
  source = tfds.data_source(name, split=split, data_dir=data_dir)
  chunk = 1024

  def read_chunk(start):
    # The data source's batched read decodes ~3x faster than item by item.
    examples = source.__getitems__(range(start, min(start + chunk, len(source))))
    return (np.stack([ex['image'] for ex in examples]).astype(np.uint8),
            np.array([ex['label'] for ex in examples], np.int32))

  ds = grain.MapDataset.range(0, len(source), chunk).map(read_chunk)
  num_threads = num_threads or min(16, os.cpu_count() or 1)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=num_threads))
  images, labels = zip(*ds)
  images, labels = np.concatenate(images), np.concatenate(labels)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'{name}:{split} has images of shape {images.shape[1:]}, '
                     'expected (H, W, 3)')
  return ArraySplit(images, labels)


def mean_image(split: ArraySplit) -> np.ndarray:
  """The per-pixel mean (H, W, 3) of a split, float32 (section 4.2)."""
  return split.images.mean(axis=0, dtype=np.float64).astype(np.float32)


def train_dataset(split: ArraySplit, local_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Endless, per-epoch-shuffled batches of this process's share of `split`.

  Every process shuffles the same global order (same seed) and takes every
  `process_count`-th example, so processes see disjoint data. Batches run on
  across epoch boundaries, as an iteration-counted schedule expects.

  Returns:
    A Grain `IterDataset` of {'image': uint8 (B,H,W,3), 'label': int32 (B,)};
    its iterator's `get_state`/`set_state` make the data order checkpointable.
  """
  ds = grain.MapDataset.range(len(split)).seed(seed).shuffle().repeat(None)
  ds = ds[process_index::process_count].batch(local_batch_size, drop_remainder=True)
  ds = ds.map(lambda idx: {'image': split.images[idx], 'label': split.labels[idx]})
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))


def eval_batches(split: ArraySplit, local_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Batches that score every example of `split` exactly once.

  Each process takes a contiguous shard; every process yields the same number
  of batches (a multi-host step needs all of them). The last batches are padded
  with zeros and carry `mask` 0 for padding, so nothing is dropped or counted
  twice whatever the batch size (the bug of google/flax#262).

  Yields:
    {'image': uint8 (B,H,W,3), 'label': int32 (B,), 'mask': float32 (B,)}.
  """
  per_process = -(-len(split) // process_count)
  start = min(process_index * per_process, len(split))
  stop = min(start + per_process, len(split))
  num_batches = -(-per_process // local_batch_size)
  for b in range(num_batches):
    lo = min(start + b * local_batch_size, stop)
    hi = min(lo + local_batch_size, stop)
    n = hi - lo
    image = np.zeros((local_batch_size,) + split.images.shape[1:], np.uint8)
    label = np.zeros((local_batch_size,), np.int32)
    mask = np.zeros((local_batch_size,), np.float32)
    image[:n], label[:n], mask[:n] = split.images[lo:hi], split.labels[lo:hi], 1.0
    yield {'image': image, 'label': label, 'mask': mask}


def normalize(images: jax.Array, mean: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 images minus the per-pixel mean image, in [0, 255] units."""
  return (images.astype(jnp.float32) - mean).astype(dtype)


def augment(rng: jax.Array, images: jax.Array, pad: int = PAD) -> jax.Array:
  """Section 4.2 augmentation, on device: zero-pad, random crop, random flip.

  Apply after `normalize`, so padded pixels are zero in mean-subtracted space
  (the zero padding the paper describes).

  Args:
    rng: PRNG key; one crop offset and one flip per image is drawn from it.
    images: (B, H, W, C) batch.
    pad: pixels padded on each side.

  Returns:
    Augmented images of the input's shape and dtype.
  """
  b, h, w, c = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  offsets = jax.random.randint(crop_rng, (b, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(flip_rng, 0.5, (b,))
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(image, offset, flip):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips)


class Prefetcher:
  """Keeps `depth` batches in flight ahead of the consumer, on a thread.

  `convert` (e.g. putting a batch on the devices) runs on the thread, so host
  gathering and host-to-device copies overlap the running step. The iterator's
  checkpointable state is recorded with each batch, so `state()` is the state
  after the last batch handed out, not after the ones still in the queue.
  """

  def __init__(self, iterator, convert, depth: int = 2):
    self._iterator = iterator
    self._convert = convert
    self._queue = queue.Queue(maxsize=depth)
    self._state = iterator.get_state()
    self._error = None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, daemon=True)
    self._thread.start()

  def _put(self, item):
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def _fill(self):
    try:
      while not self._stop.is_set():
        batch = self._convert(next(self._iterator))
        self._put((batch, self._iterator.get_state()))
    except BaseException as e:  # Surface errors in the consumer's thread.
      self._put((e, None))

  def __iter__(self):
    return self

  def __next__(self):
    if self._error is not None:
      raise self._error
    batch, state = self._queue.get()
    if isinstance(batch, BaseException):
      self._error = batch  # The thread has ended: raise again on every call.
      raise batch
    self._state = state
    return batch

  def state(self):
    """The wrapped iterator's state after the last batch returned."""
    return self._state

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)
