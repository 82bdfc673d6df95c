"""The datasets the training loop reads, behind one small interface.

`DATASETS` names every dataset and its family; `create(config)` returns the
family's `Dataset`:
- CIFAR (`cifar_input`): decoded into memory once; crop/flip augmentation and
  mean subtraction on the device.
- ImageNet (`imagenet_input`): JPEGs streamed from TFDS data sources and
  decoded and augmented in Grain worker processes; uint8 crops go to the
  device, where lighting noise and normalisation run.
The loop calls only the methods of `Dataset`; the host side yields numpy
batches of this process's share of the data, the device side
(`preprocess_train`, `preprocess_eval`) runs inside the compiled steps.
"""

import abc
import dataclasses
import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from resnet_jax import errors


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the loop needs to know of a dataset before reading it."""
  family: str  # 'cifar' or 'imagenet'
  num_classes: int
  train_split: str
  eval_split: str  # The split the paper reports on (CIFAR test, ImageNet val).
  num_train: int
  num_eval: int
  prepare: str  # How to get it, for the error message.


_TFDS_BUILD = ('prepare it once with `pip install -e ".[prepare]" && tfds build {} '
               '--file_format=array_record{}` (TensorFlow is needed only then)')
DATASETS = {
    'cifar10': DatasetInfo('cifar', 10, 'train', 'test', 50_000, 10_000,
                           _TFDS_BUILD.format('cifar10', '')),
    'cifar10_jpeg': DatasetInfo('cifar', 10, 'train', 'test', 50_000, 10_000,
                                'set --config.input.data_dir to the directory that '
                                'holds it (../shared/data/tfds here)'),
    'imagenet2012': DatasetInfo('imagenet', 1000, 'train', 'validation', 1_281_167, 50_000,
                                _TFDS_BUILD.format('imagenet2012', ' --manual_dir=DIR') +
                                ', DIR holding ILSVRC2012_img_train.tar and '
                                'ILSVRC2012_img_val.tar'),
    'imagenette224': DatasetInfo('imagenet', 10, 'train', 'validation', 9_469, 3_925,
                                 'set --config.input.data_dir to the directory that '
                                 'holds it (../shared/data/tfds here)'),
}
HOLDOUT = 'holdout'  # Name of the held-out slice of the training split.


def check_dataset(name: str, data_dir: str | None):
  """Fails fast, with the fix, if `name` cannot be read from `data_dir`."""
  if name not in DATASETS:
    raise errors.ConfigError(f'unknown dataset {name!r}; valid: {sorted(DATASETS)}. '
                     'Set --config.input.dataset.')
  # epath: data_dir may be gs:// or any other etils.epath path.
  if data_dir is not None and not epath.Path(data_dir).is_dir():
    raise errors.MissingError(
        f'data_dir {data_dir!r} does not exist. Point --config.input.data_dir '
        'at a TFDS data directory (e.g. ../shared/data/tfds for cifar10_jpeg '
        'and imagenette224).')
  root = data_dir or os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))
  if not epath.Path(root, name).is_dir():
    prepare = DATASETS[name].prepare.replace('array_record`', f'array_record --data_dir={root}`')
    raise errors.MissingError(f'dataset {name!r} not found under {root!r}: {prepare}.')


class ProcessBlocks(grain.MapDataset):
  """This process's contiguous block of each global batch of `parent`.

  Global batch k is elements [k*B, (k+1)*B) of `parent` (B = local batch x
  process count); process p reads its slice [p*b, (p+1)*b) of it. So the
  global batch, and its order (which decides per-position device randomness
  such as crops, flips and lighting), is the same for any number of
  processes, and each process reads only its own examples.
  """

  def __init__(self, parent: grain.MapDataset, local_batch_size: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    self._b, self._p, self._n = local_batch_size, process_index, process_count

  def __len__(self):
    return len(self._parent) // (self._b * self._n) * self._b

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, offset = divmod(index, self._b)
    return self._parent[(batch * self._n + self._p) * self._b + offset]

  def __str__(self):
    return f'ProcessBlocks(b={self._b}, p={self._p}/{self._n})'


class Dataset(abc.ABC):
  """One dataset family's input pipeline, as the training loop sees it."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.info = DATASETS[config.input.dataset]

  @property
  @abc.abstractmethod
  def image_shape(self) -> tuple[int, int, int]:
    """Shape of one training image as it reaches the device."""

  @abc.abstractmethod
  def normalization(self) -> dict[str, np.ndarray]:
    """{'mean', 'std'} (float32, 0..255 scale); saved in every checkpoint."""

  @abc.abstractmethod
  def normalization_shapes(self) -> dict[str, tuple]:
    """Shapes of `normalization()`'s arrays, known without reading data."""

  @property
  def num_workers(self) -> int | None:
    """Host worker processes; a saved data position is only valid for the same."""
    return None

  @abc.abstractmethod
  def train_batches(self, local_batch_size: int, seed: int, process_index: int,
                    process_count: int):
    """Endless `grain.IterDataset` of {'image': uint8, 'label': int32}, or of
    {'index': int32} into `resident_arrays()` if those are given (its
    iterators' get_state/set_state are the checkpointable position)."""

  def resident_arrays(self) -> dict[str, np.ndarray]:
    """The training split to keep on every device ({'image', 'label'}), or {}
    when the host sends whole batches."""
    return {}

  @abc.abstractmethod
  def eval_batches(self, split: str, view: str, local_batch_size: int,
                   process_index: int, process_count: int):
    """Padded batches scoring every example of `split` once over all processes.

    Yields {'image': uint8 (B, V, H, W, 3), 'label', 'mask' (0: padding),
    'index' (position in the split)}.
    """

  def eval_splits(self) -> dict[str, int]:
    """Evaluation split name -> number of examples (held-out slice first)."""
    out = {}
    if self.config.input.holdout_validation:
      out[HOLDOUT] = self.config.input.num_holdout
    out[self.info.eval_split] = self.info.num_eval
    return out

  def num_examples(self, split: str) -> int:
    """Examples in an evaluation split, as read (not as registered)."""
    return self.eval_splits()[split]

  def tfds_split(self, split: str) -> str:
    """TFDS split string of a training/evaluation split name."""
    inp = self.config.input
    if split == 'train':
      if inp.holdout_validation:
        return f'{self.info.train_split}[:-{inp.num_holdout}]'
      return inp.get('train_split') or self.info.train_split
    if split == HOLDOUT:
      return f'{self.info.train_split}[-{inp.num_holdout}:]'
    if split == self.info.eval_split:
      return inp.get('eval_split') or split
    raise ValueError(f'unknown split {split!r}; valid: train, {", ".join(self.eval_splits())}')

  @staticmethod
  @abc.abstractmethod
  def preprocess_train(rng: jax.Array, images: jax.Array, norm: dict, config) -> jax.Array:
    """Device side of training: uint8 batch -> float32 network input."""

  @staticmethod
  def preprocess_eval(images: jax.Array, norm: dict) -> jax.Array:
    """Device side of evaluation: uint8 views -> float32 network input."""
    return normalize(images, norm)


def flatten_views(images: jax.Array) -> tuple[jax.Array, int, int]:
  """Evaluation batches, (B, V, H, W, 3) or (B, H, W, 3) (one view each) ->
  (B*V, H, W, 3) images, B, V."""
  if images.ndim == 4:
    images = images[:, None]
  b, v = images.shape[:2]
  return images.reshape((b * v,) + images.shape[2:]), b, v


def normalize(images: jax.Array, norm: dict) -> jax.Array:
  """(images - mean) / std, float32; a per-pixel mean of another size than
  the images (multi-scale views) is reduced to its per-channel mean."""
  mean = norm['mean']
  if mean.ndim == 3 and mean.shape[:2] != images.shape[-3:-1]:
    mean = mean.mean(axis=(0, 1))
  return (images.astype(jnp.float32) - mean) / norm['std']


class CifarData(Dataset):
  """CIFAR-10 (section 4.2): in memory, per-pixel mean, augmented on device."""

  def __init__(self, config, preloaded=None):
    super().__init__(config)
    # (train ArraySplit, {eval name: ArraySplit}); each split decoded on first use.
    self._splits = preloaded
    self._loaded = {}

  def _split(self, name):
    from resnet_jax import cifar_input
    if self._splits is not None:
      train, evals = self._splits
      if name == 'train':
        return train
      if name not in evals:
        raise ValueError(f'no {name!r} split loaded; have {sorted(evals)}')
      return evals[name]
    if name not in self._loaded:
      inp = self.config.input
      check_dataset(inp.dataset, inp.data_dir)
      self._loaded[name] = cifar_input.load_split(inp.dataset, self.tfds_split(name),
                                                  inp.data_dir)
    return self._loaded[name]

  @property
  def image_shape(self):
    if self._splits is not None:
      return tuple(self._splits[0].images.shape[1:])
    return (32, 32, 3)

  def normalization(self):
    from resnet_jax import cifar_input
    mean = cifar_input.mean_image(self._split('train'))
    return {'mean': mean, 'std': np.ones((3,), np.float32)}  # Mean only, as the paper.

  def normalization_shapes(self):
    return {'mean': self.image_shape, 'std': (3,)}

  def train_batches(self, local_batch_size, seed, process_index, process_count):
    from resnet_jax import cifar_input
    return cifar_input.train_dataset(self._split('train'), local_batch_size, seed,
                                     process_index, process_count,
                                     indices_only=self._device_resident)

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
    from resnet_jax import cifar_input
    if view != 'center':
      raise ValueError(f'CIFAR is tested on the single original view, not {view!r}')
    for batch in cifar_input.eval_batches(self._split(split), local_batch_size, process_index,
                                          process_count):
      batch['image'] = batch['image'][:, None]  # One view per image.
      yield batch

  def eval_splits(self):
    if self._splits is not None:  # Preloaded (tests, notebooks): what is there.
      return {name: len(split) for name, split in self._splits[1].items()}
    return super().eval_splits()

  def num_examples(self, split):
    return len(self._split(split))

  @staticmethod
  def preprocess_train(rng, images, norm, config):
    from resnet_jax import cifar_input
    del config
    return cifar_input.augment(rng, normalize(images, norm))


class ImagenetData(Dataset):
  """ImageNet and its proxies (section 3.4): streamed JPEGs, host augmentation."""

  def _source(self, split):
    from resnet_jax import imagenet_input
    inp = self.config.input
    return imagenet_input.open_source(inp.dataset, self.tfds_split(split), inp.data_dir)

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
    from resnet_jax import imagenet_input
    inp = self.config.input
    std = imagenet_input.STDDEV_RGB.astype(np.float32)
    if inp.normalization == 'channel_mean_std':
      return {'mean': imagenet_input.MEAN_RGB.astype(np.float32), 'std': std}
    # 'pixel_mean': the paper's per-pixel mean, at the evaluation crop.
    source = self._source('train')
    count = min(inp.num_mean_images, len(source))
    total = np.zeros(self.image_shape, np.float64)
    batches = imagenet_input.eval_dataset(
        _Prefix(source, count), view='center', local_batch_size=100,
        num_workers=self.num_workers, resize_size=self.config.eval.resize_size,
        crop_size=inp.image_size)
    for batch in batches:
      total += (batch['image'][:, 0] * batch['mask'][:, None, None, None]).sum(0)
    return {'mean': (total / count).astype(np.float32), 'std': np.ones((3,), np.float32)}

  def normalization_shapes(self):
    if self.config.input.normalization == 'pixel_mean':
      return {'mean': self.image_shape, 'std': (3,)}
    return {'mean': (3,), 'std': (3,)}

  def train_batches(self, local_batch_size, seed, process_index, process_count):
    from resnet_jax import imagenet_input
    inp = self.config.input
    return imagenet_input.train_dataset(
        self._source('train'), local_batch_size=local_batch_size, seed=seed,
        process_index=process_index, process_count=process_count,
        crop_size=inp.image_size, scale_range=tuple(inp.scale_range),
        num_workers=self.num_workers)

  def eval_batches(self, split, view, local_batch_size, process_index, process_count):
    from resnet_jax import imagenet_input
    e = self.config.eval
    return imagenet_input.eval_dataset(
        self._source(split), view=view, local_batch_size=local_batch_size,
        process_index=process_index, process_count=process_count,
        num_workers=self.num_workers, resize_size=e.resize_size, crop_size=e.crop_size)

  def multi_scale_groups(self, split, scale, process_index, process_count):
    """This process's examples of `split` grouped by canvas at `scale`.

    Returns {(Hc, Wc): example indices}; the shard is the same contiguous one
    as `eval_batches`'.
    """
    from resnet_jax import imagenet_input
    source = self._source(split)
    per_process = -(-len(source) // process_count)
    start = min(process_index * per_process, len(source))
    indices = np.arange(start, min(start + per_process, len(source)))
    sizes = imagenet_input.image_sizes(source, indices, num_threads=max(1, self.num_workers))
    groups = {}
    for index, (h, w) in zip(indices, sizes):
      groups.setdefault(imagenet_input.canvas_shape(int(h), int(w), scale), []).append(index)
    return {canvas: np.asarray(idx) for canvas, idx in groups.items()}

  def multi_scale_batches(self, split, indices, scale, canvas, local_batch_size, num_batches):
    from resnet_jax import imagenet_input
    return imagenet_input.multi_scale_dataset(
        self._source(split), indices, scale=scale, canvas_hw=canvas,
        local_batch_size=local_batch_size, num_batches=num_batches,
        num_workers=self.num_workers)

  @staticmethod
  def preprocess_train(rng, images, norm, config):
    from resnet_jax import imagenet_input
    images = images.astype(jnp.float32)
    if config.input.lighting_std:
      images = imagenet_input.lighting(rng, images, config.input.lighting_std)
    return normalize(images, norm)


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


def create(config: ml_collections.ConfigDict, preloaded=None) -> Dataset:
  """The config's dataset. `preloaded` (CIFAR only): (train, {name: split}) arrays."""
  info = DATASETS[config.input.dataset]
  if info.family == 'cifar':
    return CifarData(config, preloaded)
  if preloaded is not None:
    raise ValueError('preloaded data is only supported for CIFAR datasets')
  return ImagenetData(config)


def gather_resident(batch: dict, resident: dict) -> dict:
  """Device side: a batch of example indices -> those examples of the
  device-resident split; a batch that carries its images is returned as is."""
  if 'index' not in batch:
    return batch
  # Replicated data, sharded indices: each device gathers its own examples.
  return {k: jnp.take(v, batch['index'], axis=0) for k, v in resident.items()}


def prefetch(batches: grain.IterDataset, convert, depth: int = 2):
  """An iterator over `convert(batch)` (e.g. onto the devices), running
  `depth` batches ahead on Grain's prefetch thread, so host gathering and
  host-to-device copies overlap the running step. Its `get_state()` is the
  position after the last batch handed out, not after those still queued."""
  from grain.experimental import ThreadPrefetchIterDataset
  return iter(ThreadPrefetchIterDataset(batches.map(convert), prefetch_buffer_size=depth))
