"""CIFAR family (section 4.2): TFDS data sources read with Grain, no TensorFlow.

CIFAR-10 fits in memory, so the split is decoded once (in parallel, by Grain)
into uint8 arrays. Training batches are drawn by a checkpointable Grain
iterator (per-epoch shuffles, deterministic given the seed, sharded per
process); the paper's augmentation (4-pixel zero padding, random 32x32 crop,
random horizontal flip) and the per-pixel mean subtraction run on the device
inside the compiled train step (`augment`, and `core.normalize`), so the host
only gathers images (and, if asked, runs TrivialAugment on them; random
erasing runs on the device). `CifarData` is the family's `core.Dataset`.

Works the same for TFDS `cifar10` and for `cifar10_jpeg` (same feature keys).
"""

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Iterator

import cv2
import grain
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import errors
from resnet_jax.data import core, folder, imagenet_views, random_erasing
from resnet_jax.data import trivial_augment as trivial_augment_lib

PAD = 4  # Section 4.2: 4 pixels padded on each side.
IMAGE_SIZE = 32  # CIFAR's side: the training size where neither data nor mean gives one.


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One decoded split held in host memory."""

  images: np.ndarray  # (N, H, W, 3) uint8
  labels: np.ndarray  # (N,) int32

  def __len__(self):
    return len(self.labels)


def load_split(
  name: str, split: str, data_dir: str | None, num_threads: int | None = None
) -> ArraySplit:
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

  source = tfds.data_source(name, split=split, data_dir=data_dir)
  chunk = 1024

  def read_chunk(start):
    # The data source's batched read decodes in one call per chunk, not one per image.
    examples = source.__getitems__(range(start, min(start + chunk, len(source))))
    return (
      np.stack([ex['image'] for ex in examples]).astype(np.uint8),
      np.array([ex['label'] for ex in examples], np.int32),
    )

  ds = grain.MapDataset.range(0, len(source), chunk).map(read_chunk)
  num_threads = num_threads or min(16, os.cpu_count() or 1)
  ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads)
  )
  images, labels = zip(*ds)
  images, labels = np.concatenate(images), np.concatenate(labels)
  if images.ndim == 4 and images.shape[-1] == 1:  # Greyscale (MNIST-like): the nets take RGB.
    images = np.repeat(images, 3, axis=-1)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise errors.DataError(
      f'{name}:{split} has images of shape {images.shape[1:]}; expected (H, W, 3) or (H, W, 1)'
    )
  return ArraySplit(images, labels)


def load_folder_split(
  index: folder.FolderIndex, spec: str, num_threads: int | None = None
) -> ArraySplit:
  """Decodes a split of an image folder into memory; its images must share one size.

  Args:
    index: the folder's `folder.index`.
    spec: split, slices allowed (e.g. 'train[:-500]').
    num_threads: decoding threads; None: one per CPU core, at most 16.

  Returns:
    The split's images (uint8, NHWC) and labels (int32), in the folder's order.

  Raises:
    errors.DataError: an unreadable image, images of different sizes, or no images.
  """
  source = index.source(spec)
  if not len(source):
    raise errors.DataError(f'split {spec!r} of the image folder {index.root} holds no images')

  def read(i):
    example = source[i]
    return imagenet_views.decode(example['image']), example['label']

  num_threads = num_threads or min(16, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    images, labels = zip(*pool.map(read, range(len(source))))
  first = images[0].shape
  for i, image in enumerate(images):
    if image.shape != first:
      raise errors.DataError(
        f'image {os.path.join(index.root, source.files[i])} is {image.shape[0]}x'
        f'{image.shape[1]} but {source.files[0]} is {first[0]}x{first[1]}: the CIFAR '
        'family needs images of one size; resize them, or use --config.input.family=imagenet'
      )
  return ArraySplit(np.stack(images), np.array(labels, np.int32))


def mean_image(split: ArraySplit) -> np.ndarray:
  """The per-pixel mean (H, W, 3) of a split, float32 (section 4.2)."""
  return split.images.mean(axis=0, dtype=np.float64).astype(np.float32)


def train_dataset(
  split: ArraySplit,
  local_batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  indices_only: bool = False,
  trivial_augment: bool = False,
) -> grain.IterDataset:
  """Endless, per-epoch-shuffled batches of this process's share of `split`.

  Every process shuffles the same global order (same seed) and takes its own
  block of each global batch (`core.ProcessBlocks`), so processes see disjoint
  data and the global batch is the same for any process count. Batches run on
  across epoch boundaries, as an iteration-counted schedule expects.

  With `trivial_augment`, each image gets TrivialAugment (`data.trivial_augment`)
  from a generator seeded by (seed, its position in the global stream), so its
  draw too is the same for any process count and after a resume.

  Returns:
    A Grain `IterDataset` of {'image': uint8 (B,H,W,3), 'label': int32 (B,)},
    or with `indices_only` of {'index': int32 (B,)} positions in `split` (for
    a split held on the devices); its iterator's `get_state`/`set_state` make
    the data order checkpointable.
  """
  if indices_only and trivial_augment:
    raise ValueError('trivial_augment changes the images on the host; indices_only sends none')
  ds = grain.MapDataset.range(len(split)).seed(seed).shuffle().repeat(None)
  if trivial_augment:  # Before sharding: the generator index is the global position.
    ds = ds.random_map(functools.partial(_trivially_augmented, split=split))
  ds = core.ProcessBlocks(ds, local_batch_size, process_index, process_count)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  if indices_only:
    ds = ds.map(lambda idx: {'index': np.asarray(idx, np.int32)})
  elif not trivial_augment:  # Augmented examples are already batched as such.
    ds = ds.map(lambda idx: {'image': split.images[idx], 'label': split.labels[idx]})
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))


def _trivially_augmented(index: int, rng: np.random.Generator, split: ArraySplit) -> dict:
  """Example `index` of `split` after TrivialAugment.

  On the host, so before the pad, crop and flip of section 4.2 that run on
  the device (`augment`), where torchvision's recipes apply it after them.
  The order matters little: each operation's sign is drawn with probability
  1/2, so a flip before or after gives views of nearly the same
  distribution, and the crop only shifts the image by up to 4 pixels.
  """
  image = trivial_augment_lib.trivial_augment(split.images[index], rng)
  return {'image': image, 'label': split.labels[index]}


def eval_batches(
  split: ArraySplit, local_batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict]:
  """Batches that score every example of `split` exactly once.

  Each process takes a contiguous shard; every process yields the same number
  of batches (a multi-host step needs all of them). The last batches are padded
  with zeros and carry `mask` 0 for padding, so nothing is dropped or counted
  twice whatever the batch size (the bug of google/flax#262).

  Yields:
    {'image': uint8 (B,H,W,3), 'label': int32 (B,), 'mask': float32 (B,),
     'index': int32 (B,) position in the split, -1 for padding}.
  """
  start, stop, num_batches = core.eval_shard(
    len(split), process_index, process_count, local_batch_size
  )
  for b in range(num_batches):
    lo = min(start + b * local_batch_size, stop)
    hi = min(lo + local_batch_size, stop)
    n = hi - lo
    image = np.zeros((local_batch_size,) + split.images.shape[1:], np.uint8)
    label = np.zeros((local_batch_size,), np.int32)
    mask = np.zeros((local_batch_size,), np.float32)
    index = np.full((local_batch_size,), -1, np.int32)
    image[:n], label[:n], mask[:n] = split.images[lo:hi], split.labels[lo:hi], 1.0
    index[:n] = np.arange(lo, hi)
    yield {'image': image, 'label': label, 'mask': mask, 'index': index}


def augment(rng: jax.Array, images: jax.Array, pad: int = PAD) -> jax.Array:
  """Section 4.2 augmentation, on device: zero-pad, random crop, random flip.

  Apply after `core.normalize`, so padded pixels are zero in mean-subtracted space
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


@dataclasses.dataclass(frozen=True)
class CenterView(core.EvalView):
  """CIFAR's only test view: the image at the training size; one of another
  size is resized to it (area averaging)."""

  shape: tuple[int, int, int]

  def of_array(self, image):
    h, w = self.shape[:2]
    if image.shape[:2] != (h, w):
      image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return image

  def of_encoded(self, encoded):
    # At full size, as `load_folder_split` decodes a folder's images.
    return self.of_array(imagenet_views.decode(encoded))


class CifarData(core.Dataset):
  """CIFAR-10 (section 4.2): in memory, per-pixel mean, augmented on device."""

  def __init__(self, config, preloaded=None):
    super().__init__(config)
    # (train ArraySplit, {eval name: ArraySplit}); each split decoded on first use.
    self._splits = preloaded
    self._loaded = {}

  def _split(self, name):
    if self._splits is not None:
      train, evals = self._splits
      if name == 'train':
        return train
      if name not in evals:
        raise ValueError(f'no {name!r} split loaded; have {sorted(evals)}')
      return evals[name]
    if name not in self._loaded:
      inp = self.config.input
      if inp.dataset == 'folder':
        index = folder.index(inp.data_dir, inp.get('skip_bad_images', False))
        split = load_folder_split(index, self.tfds_split(name))
        wanted = self.info.image_shape  # The first training image's: every split's size.
        if wanted and split.images.shape[1:] != tuple(wanted):
          raise errors.DataError(
            f'the {name!r} images of the folder {inp.data_dir} are '
            f'{split.images.shape[2]}x{split.images.shape[1]}, its training images '
            f'{wanted[1]}x{wanted[0]}: the cifar family needs one size; resize them, or use '
            'an ImageNet config (any size)'
          )
        self._loaded[name] = split
      else:
        core.check_dataset(inp)
        self._loaded[name] = load_split(inp.dataset, self.tfds_split(name), inp.data_dir)
    return self._loaded[name]

  @property
  def image_shape(self):
    if self._splits is not None:
      return tuple(self._splits[0].images.shape[1:])
    if self.info.image_shape is None:  # A folder's: its images' size, known once read.
      return tuple(self._split('train').images.shape[1:])
    return tuple(self.info.image_shape)

  def normalization(self):
    mean = mean_image(self._split('train'))
    return {'mean': mean, 'std': np.ones((3,), np.float32)}  # Mean only, as the paper.

  def normalization_shapes(self):
    return {'mean': self.image_shape, 'std': (3,)}

  def train_batches(self, local_batch_size, seed, process_index, process_count):
    return train_dataset(
      self._split('train'),
      local_batch_size,
      seed,
      process_index,
      process_count,
      indices_only=self._device_resident,
      trivial_augment=bool(self.config.input.get('trivial_augment', False)),
    )

  @property
  def _device_resident(self) -> bool:
    return bool(self.config.input.get('device_resident'))

  def resident_arrays(self):
    # 50k CIFAR images are 150 MB of uint8: small next to any accelerator's
    # memory, and gathering them on the device spares a copy per step.
    if not self._device_resident:
      return {}
    split = self._split('train')
    return {'image': split.images, 'label': split.labels}

  def eval_batches(self, split, view, local_batch_size, process_index, process_count):
    if view != 'center':
      raise ValueError(f'CIFAR is tested on the single original view, not {view!r}')
    for batch in eval_batches(self._split(split), local_batch_size, process_index, process_count):
      batch['image'] = batch['image'][:, None]  # One view per image.
      yield batch

  def eval_splits(self):
    if self._splits is not None:  # Preloaded (tests, notebooks): what is there.
      return {name: len(split) for name, split in self._splits[1].items()}
    return super().eval_splits()

  def num_examples(self, split):
    return len(self._split(split))

  def check_splits(self, splits=None):
    if self._splits is None:
      return super().check_splits(splits)
    for name in splits or ['train', *self.eval_splits()]:  # Preloaded: check the arrays.
      split = self._split(name)
      if not len(split):
        raise errors.ConfigError(f'the preloaded {name!r} split holds no examples')
      self.check_labels(int(split.labels.max()) + 1)

  @classmethod
  def eval_view(cls, config, norm_shapes):
    del config
    mean = tuple(norm_shapes['mean'])
    # The per-pixel mean has the training images' size; a per-channel one gives none.
    h, w = mean[:2] if len(mean) == 3 else (IMAGE_SIZE, IMAGE_SIZE)
    return CenterView((int(h), int(w), 3))

  @staticmethod
  def preprocess_train(rng, images, norm, config):
    images = augment(rng, core.normalize(images, norm))
    if probability := config.input.get('random_erasing', 0.0):
      erasing_rng = jax.random.fold_in(rng, core.KEY_STREAMS['random_erasing'])
      images = random_erasing.random_erasing(erasing_rng, images, probability)
    return images
