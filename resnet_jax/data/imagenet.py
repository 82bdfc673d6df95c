"""ImageNet family (section 3.4): JPEGs streamed with Grain, views on the host.

Examples are read one at a time from a TFDS data source (ArrayRecord, no
TensorFlow) in Grain worker processes, decoded and cut into the paper's views
there (`imagenet_views`; optionally Inception's crop and TrivialAugment).
Batches leave the host as uint8; on the device they become float, get
`lighting` (AlexNet's PCA noise), are normalised with MEAN_RGB / STDDEV_RGB
(or the per-pixel mean) and optionally randomly erased. Serves TFDS
`imagenet2012` and `imagenette224` alike (same feature keys); `ImagenetData`
is the family's `core.Dataset`.
"""

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Sequence

import cv2
import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from etils import epath

from resnet_jax import errors, progress
from resnet_jax.data import core, folder, random_erasing
from resnet_jax.data import trivial_augment as trivial_augment_lib
from resnet_jax.data.imagenet_train_views import (
  CROP_AREA_RANGE,
  CROP_ASPECT_RANGE,
  TRAIN_SCALE_RANGE,
  resized_crop_example,
  train_example,
)
from resnet_jax.data.imagenet_views import (
  CROP_SIZE,
  EVAL_RESIZE,
  VIEWS,
  canvas_shape,
  center_crop,
  center_view,
  decode,
  decode_resized,
  image_size,
  multi_scale_views,
  resized_shape,
  ten_crops,
)

# Pixel statistics on a 0..255 scale (fb.resnet.torch's, from ImageNet).
MEAN_RGB = 255 * np.array([0.485, 0.456, 0.406], np.float32)
STDDEV_RGB = 255 * np.array([0.229, 0.224, 0.225], np.float32)
# AlexNet's PCA of ImageNet RGB pixels on a [0, 1] scale (as fb.resnet.torch).
# The eigenvectors are the COLUMNS of PCA_EIGVEC (the first column is the
# luminance direction, ~(1, 1, 1)/sqrt(3), with the largest eigenvalue); its
# rows are the three triples listed in PAPER.md, as in transforms.lua.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array(
  [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)


def open_source(name: str, split: str, data_dir: str | None):
  """The TFDS data source of a split, with the JPEG bytes left undecoded.

  Args:
    name: TFDS name, e.g. 'imagenet2012' or 'imagenette224'.
    split: split, slices allowed (e.g. 'validation[:1000]').
    data_dir: TFDS data directory; None for TFDS's default.

  Returns:
    A random-access data source of {'image': JPEG bytes, 'label': int,
    'file_name': bytes}.

  Raises:
    FileNotFoundError: the dataset is not prepared under `data_dir`.
  """
  import tensorflow_datasets as tfds  # Heavy import; only where data is read.

  root = data_dir or os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))
  hint = (
    f'prepare it once with `tfds build {name} --manual_dir=DIR '
    f'--file_format=array_record --data_dir={root}` (DIR holds the '
    'ILSVRC2012 tars; needs TensorFlow once), or set '
    '--config.input.data_dir to the directory that holds it.'
  )
  # A prepared dataset has name/[config/]version/dataset_info.json.
  # epath: data_dir may be gs:// or any other etils.epath path.
  dataset_dir = epath.Path(root, name)
  if not any(
    info
    for pattern in ('*/dataset_info.json', '*/*/dataset_info.json')
    for info in dataset_dir.glob(pattern)
  ):
    raise errors.MissingError(f'dataset {name!r} not found under {root!r}: {hint}')
  try:
    return tfds.data_source(
      name,
      split=split,
      data_dir=root,
      download=False,
      decoders={'image': tfds.decode.SkipDecoding()},
    )
  except NotImplementedError as e:  # Prepared, but as TFRecord files.
    raise errors.MissingError(
      f'dataset {name!r} under {root!r} is not in the ArrayRecord format: {hint}'
    ) from e


def image_sizes(source, indices: Sequence[int], num_threads: int = 8) -> np.ndarray:
  """Header sizes of many examples of a data source.

  Args:
    source: data source of {'image': encoded bytes, ...}.
    indices: example positions in the source.
    num_threads: reader threads (the reads dominate, headers are cheap).

  Returns:
    int32 (len(indices), 2) array of (height, width).
  """
  indices = [int(i) for i in indices]
  chunk = 256

  def read(start):
    part = indices[start : start + chunk]
    if hasattr(source, '__getitems__'):
      examples = source.__getitems__(part)  # One batched read per chunk.
    else:
      examples = [source[i] for i in part]
    return [image_size(ex['image']) for ex in examples]

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    parts = list(pool.map(read, range(0, len(indices), chunk)))
  return np.array([hw for part in parts for hw in part], np.int32).reshape(-1, 2)


def lighting(rng: jax.Array, images: jax.Array, std: float = 0.1) -> jax.Array:
  """AlexNet's PCA lighting noise, as fb.resnet.torch's `Lighting`.

  Each image gets one RGB offset, 255 * PCA_EIGVEC @ (alpha * PCA_EIGVAL) with
  alpha ~ N(0, std^2) per principal component (transforms.lua:
  rgb = eigvec * (alpha .* eigval), eigenvectors as columns), added to every
  pixel. The eigenvalues are on a [0, 1] scale, hence the 255.

  Args:
    rng: PRNG key.
    images: float (B, H, W, 3) on a 0..255 scale (before normalisation).
    std: standard deviation of alpha (0.1).

  Returns:
    images + offset, same shape and dtype.
  """
  alpha = std * jax.random.normal(rng, (images.shape[0], 3), jnp.float32)
  offset = 255 * (alpha * jnp.asarray(PCA_EIGVAL)) @ jnp.asarray(PCA_EIGVEC).T
  return images + offset[:, None, None, :].astype(images.dtype)


def _init_worker(worker_index: int, worker_count: int):
  del worker_index, worker_count
  cv2.setNumThreads(1)  # One core per worker process: no thread oversubscription.


def _prefetch(ds: grain.MapDataset, num_workers: int) -> grain.IterDataset:
  """Batches computed in-process (0) or by `num_workers` Grain processes.

  Batching happens in the MapDataset, before the per-worker slicing, so whole
  batches are dealt round-robin to the workers and the output (order and
  content) does not depend on num_workers.
  """
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))
  if num_workers > 0:
    # Grain's worker processes read absl flags; outside an absl app (tests,
    # notebooks) their defaults must count as parsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers), worker_init_fn=_init_worker
    )
  return ds


TRAIN_CROPS = ('scale', 'random_resized')


def train_view_fn(
  train_crop: str,
  crop_size: int,
  scale_range: tuple[int, int] = TRAIN_SCALE_RANGE,
  area_range: tuple[float, float] = CROP_AREA_RANGE,
  aspect_range: tuple[float, float] = CROP_ASPECT_RANGE,
):
  """The training view as a picklable `view(jpeg, rng) -> uint8 crop` (Grain's
  worker processes receive it): 'scale', the paper's (`train_example`), or
  'random_resized', Inception's (`resized_crop_example`)."""
  if train_crop == 'scale':
    return functools.partial(train_example, crop_size=crop_size, scale_range=scale_range)
  if train_crop == 'random_resized':
    return functools.partial(
      resized_crop_example, size=crop_size, area_range=area_range, aspect_range=aspect_range
    )
  raise ValueError(f'unknown train_crop {train_crop!r}; valid: {TRAIN_CROPS}')


def _train_element(example, rng, view, trivial_augment):
  image = view(example['image'], rng)
  if trivial_augment:  # Drawn after the crop, whose draws stay those of the default.
    image = trivial_augment_lib.trivial_augment(image, rng)
  return {'image': image, 'label': np.int32(example['label'])}


def train_dataset(
  source,
  *,
  local_batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  crop_size: int = CROP_SIZE,
  scale_range: tuple[int, int] = TRAIN_SCALE_RANGE,
  num_workers: int = 0,
  train_crop: str = 'scale',
  area_range: tuple[float, float] = CROP_AREA_RANGE,
  aspect_range: tuple[float, float] = CROP_ASPECT_RANGE,
  trivial_augment: bool = False,
) -> grain.IterDataset:
  """Endless, per-epoch-shuffled training batches of this process's share.

  Every process shuffles the same global order (same seed) and takes its own
  block of each global batch (`core.ProcessBlocks`), so the global batch is
  the same for any process count. Each example's view is drawn from a generator
  seeded by (seed, its position in the global stream), so batches are the
  same for any num_workers and after resuming from a checkpointed state.

  Args:
    source: data source of {'image': JPEG bytes, 'label': int}.
    local_batch_size: examples per batch on this process.
    seed: shuffle and augmentation seed.
    process_index, process_count: this process's share.
    crop_size: the training crop's side (224).
    scale_range: train_crop 'scale': the range of the shorter side ([256, 480]).
    num_workers: Grain worker processes decoding; 0 decodes in-process.
    train_crop: 'scale' (the paper's) or 'random_resized' (Inception's).
    area_range, aspect_range: train_crop 'random_resized': the crop's
      fraction of the image's area and its aspect ratio (width / height).
    trivial_augment: TrivialAugment on each crop (`data.trivial_augment`).

  Returns:
    IterDataset of {'image': uint8 (B, crop, crop, 3), 'label': int32 (B,)};
    its iterator's get_state/set_state make the position checkpointable.
  """
  view = train_view_fn(train_crop, crop_size, scale_range, area_range, aspect_range)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  # Augment before sharding: the generator index is the global position.
  ds = ds.random_map(functools.partial(_train_element, view=view, trivial_augment=trivial_augment))
  ds = core.ProcessBlocks(ds, local_batch_size, process_index, process_count)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return _prefetch(ds, num_workers)


def _eval_element(position, *, source, start, stop, view, resize_size, crop_size):
  index = start + position
  num_views = VIEWS[view]
  if index >= stop:  # Padding: scored with mask 0.
    return {
      'image': np.zeros((num_views, crop_size, crop_size, 3), np.uint8),
      'label': np.int32(0),
      'mask': np.float32(0),
      'index': np.int32(-1),
    }
  example = source[index]
  resized = decode_resized(example['image'], resize_size)
  if view == 'center':
    images = center_crop(resized, crop_size)[None]
  else:
    images = ten_crops(resized, crop_size)
  return {
    'image': images,
    'label': np.int32(example['label']),
    'mask': np.float32(1),
    'index': np.int32(index),
  }


def eval_dataset(
  source,
  *,
  view: str,
  local_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  num_workers: int = 0,
  resize_size: int = EVAL_RESIZE,
  crop_size: int = CROP_SIZE,
) -> grain.IterDataset:
  """Test batches that score every example of a split exactly once.

  Each process takes a contiguous shard; every process yields the same number
  of batches, padded to full size with mask 0 and index -1.

  Args:
    source: data source of {'image': JPEG bytes, 'label': int}.
    view: 'center' (1 view) or 'ten_crop' (10 views, see `ten_crop_views`).
    local_batch_size: examples per batch on this process.
    process_index, process_count: this process's shard.
    num_workers: Grain worker processes decoding; 0 decodes in-process.
    resize_size, crop_size: shorter side before cropping, crop side.

  Returns:
    IterDataset of {'image': uint8 (B, V, crop, crop, 3), 'label': int32 (B,),
    'mask': float32 (B,), 'index': int32 (B,)}, in split order.
  """
  if view not in VIEWS:
    raise ValueError(f'unknown view {view!r}; valid: {sorted(VIEWS)}')
  start, stop, num_batches = core.eval_shard(
    len(source), process_index, process_count, local_batch_size
  )
  ds = grain.MapDataset.range(num_batches * local_batch_size).map(
    functools.partial(
      _eval_element,
      source=source,
      start=start,
      stop=stop,
      view=view,
      resize_size=resize_size,
      crop_size=crop_size,
    )
  )
  return _prefetch(ds.batch(local_batch_size), num_workers)


def _multi_scale_element(position, *, source, indices, scale, canvas_hw):
  hc, wc = canvas_hw
  if position >= len(indices):
    return {
      'image': np.zeros((2, hc, wc, 3), np.uint8),
      'pixel_mask': np.zeros((hc, wc), bool),
      'label': np.int32(0),
      'mask': np.float32(0),
      'index': np.int32(-1),
    }
  index = int(indices[position])
  example = source[index]
  jpeg = example['image']
  h, w = image_size(jpeg)
  image = decode(jpeg, min_shorter_side=scale)
  views, (vh, vw) = multi_scale_views(
    image, scale, canvas_hw, resized_hw=resized_shape(h, w, scale)
  )
  pixel_mask = np.zeros((hc, wc), bool)
  pixel_mask[:vh, :vw] = True
  return {
    'image': views,
    'pixel_mask': pixel_mask,
    'label': np.int32(example['label']),
    'mask': np.float32(1),
    'index': np.int32(index),
  }


def multi_scale_dataset(
  source,
  indices: Sequence[int],
  *,
  scale: int,
  canvas_hw: tuple[int, int],
  local_batch_size: int,
  num_batches: int,
  num_workers: int = 0,
) -> grain.IterDataset:
  """Whole-image batches of one canvas bucket at one scale (multi-scale test).

  The caller groups example indices by `canvas_shape` and agrees num_batches
  across processes; batches are padded with empty examples to exactly
  num_batches.

  Args:
    source: data source of {'image': JPEG bytes, 'label': int}.
    indices: example positions, all of bucket `canvas_hw` at `scale`.
    scale: the resized shorter side.
    canvas_hw: (Hc, Wc).
    local_batch_size: examples per batch.
    num_batches: batches to yield; >= ceil(len(indices) / local_batch_size).
    num_workers: Grain worker processes decoding; 0 decodes in-process.

  Returns:
    IterDataset of {'image': uint8 (B, 2, Hc, Wc, 3) (the image and its
    flip), 'pixel_mask': bool (B, Hc, Wc) (the valid region), 'label': int32,
    'mask': float32 (0 for padding), 'index': int32 (-1 for padding)}.
  """
  indices = np.asarray(indices, np.int64)
  if len(indices) > num_batches * local_batch_size:
    raise ValueError(
      f'{len(indices)} examples do not fit {num_batches} batches of {local_batch_size}'
    )
  ds = grain.MapDataset.range(num_batches * local_batch_size).map(
    functools.partial(
      _multi_scale_element, source=source, indices=indices, scale=scale, canvas_hw=tuple(canvas_hw)
    )
  )
  return _prefetch(ds.batch(local_batch_size), num_workers)


@dataclasses.dataclass(frozen=True)
class CenterView(core.EvalView):
  """The center view (section 3.4): shorter side `resize_size`, central
  `crop_size` crop; encoded images decoded as `eval_dataset` decodes them."""

  resize_size: int
  crop_size: int

  @property
  def shape(self):
    return (self.crop_size, self.crop_size, 3)

  def of_array(self, image):
    return center_view(image, self.resize_size, self.crop_size)

  def of_encoded(self, encoded):
    return center_crop(decode_resized(encoded, self.resize_size), self.crop_size)


class ImagenetData(core.Dataset):
  """ImageNet and its proxies (section 3.4): streamed JPEGs, host augmentation."""

  def _source(self, split):
    inp = self.config.input
    if inp.dataset == 'folder':
      index = folder.index(inp.data_dir, inp.get('skip_bad_images', False))
      return index.source(self.tfds_split(split))
    return open_source(inp.dataset, self.tfds_split(split), inp.data_dir)

  def num_examples(self, split):
    return len(self._source(split))

  @property
  def num_workers(self) -> int:
    workers = self.config.input.num_workers
    return os.cpu_count() or 1 if workers is None else workers

  @property
  def image_shape(self):
    size = self.config.input.image_size
    return (size, size, 3)

  def normalization(self):
    inp = self.config.input
    std = STDDEV_RGB.astype(np.float32)
    if inp.normalization == 'channel_mean_std':
      return {'mean': MEAN_RGB.astype(np.float32), 'std': std}
    # 'pixel_mean': the paper's per-pixel mean, at the evaluation crop.
    source = self._source('train')
    count = min(inp.num_mean_images, len(source))
    total = np.zeros(self.image_shape, np.float64)
    per_batch = 100
    batches = eval_dataset(
      _Prefix(source, count),
      view='center',
      local_batch_size=per_batch,
      num_workers=self.num_workers,
      resize_size=self.config.eval.resize_size,
      crop_size=inp.image_size,
    )
    num_batches = core.eval_shard(count, 0, 1, per_batch)[2]
    for batch in progress.progress(batches, num_batches, f'pixel mean of {count} train images'):
      total += (batch['image'][:, 0] * batch['mask'][:, None, None, None]).sum(0)
    return {'mean': (total / count).astype(np.float32), 'std': np.ones((3,), np.float32)}

  def normalization_shapes(self):
    if self.config.input.normalization == 'pixel_mean':
      return {'mean': self.image_shape, 'std': (3,)}
    return {'mean': (3,), 'std': (3,)}

  def train_batches(self, local_batch_size, seed, process_index, process_count):
    inp = self.config.input
    return train_dataset(
      self._source('train'),
      local_batch_size=local_batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      crop_size=inp.image_size,
      scale_range=tuple(inp.scale_range),
      num_workers=self.num_workers,
      train_crop=inp.get('train_crop', 'scale'),
      area_range=tuple(inp.get('crop_area_range', CROP_AREA_RANGE)),
      aspect_range=tuple(inp.get('crop_aspect_range', CROP_ASPECT_RANGE)),
      trivial_augment=bool(inp.get('trivial_augment', False)),
    )

  def eval_batches(self, split, view, local_batch_size, process_index, process_count):
    e = self.config.eval
    return eval_dataset(
      self._source(split),
      view=view,
      local_batch_size=local_batch_size,
      process_index=process_index,
      process_count=process_count,
      num_workers=self.num_workers,
      resize_size=e.resize_size,
      crop_size=e.crop_size,
    )

  def multi_scale_groups(self, split, scale, process_index, process_count):
    """This process's examples of `split` grouped by canvas at `scale`.

    Returns {(Hc, Wc): example indices}; the shard is the same contiguous one
    as `eval_batches`'.
    """
    source = self._source(split)
    start, stop, _ = core.eval_shard(len(source), process_index, process_count, 1)
    indices = np.arange(start, stop)
    sizes = image_sizes(source, indices, num_threads=max(1, self.num_workers))
    groups = {}
    for index, (h, w) in zip(indices, sizes):
      groups.setdefault(canvas_shape(int(h), int(w), scale), []).append(index)
    return {canvas: np.asarray(idx) for canvas, idx in groups.items()}

  def multi_scale_batches(self, split, indices, scale, canvas, local_batch_size, num_batches):
    return multi_scale_dataset(
      self._source(split),
      indices,
      scale=scale,
      canvas_hw=canvas,
      local_batch_size=local_batch_size,
      num_batches=num_batches,
      num_workers=self.num_workers,
    )

  @classmethod
  def eval_view(cls, config, norm_shapes):
    del norm_shapes  # Views have the evaluation's size; a per-pixel mean adapts to it.
    return CenterView(int(config.eval.resize_size), int(config.eval.crop_size))

  @staticmethod
  def preprocess_train(rng, images, norm, config):
    images = images.astype(jnp.float32)
    if config.input.lighting_std:
      images = lighting(rng, images, config.input.lighting_std)
    images = core.normalize(images, norm)
    if probability := config.input.get('random_erasing', 0.0):
      erasing_rng = jax.random.fold_in(rng, core.KEY_STREAMS['random_erasing'])
      images = random_erasing.random_erasing(erasing_rng, images, probability)
    return images


class _Prefix:
  """The first `count` examples of a data source."""

  def __init__(self, source, count):
    self._source, self._count = source, count

  def __len__(self):
    return self._count

  def __getitem__(self, index):
    if not 0 <= index < self._count:
      raise IndexError(index)
    return self._source[index]
