"""The bottom of the input pipeline: the `Dataset` interface the loop calls
(what a dataset is comes from `catalog`), and how data is split between
processes.

The loop calls only the methods of `Dataset`; the host side yields numpy
batches of this process's share of the data, the device side
(`preprocess_train`, `preprocess_eval`) runs inside the compiled steps.
`Dataset.eval_view` makes one image's evaluation view without any data, for
prediction. The families (`data.cifar`, `data.imagenet`) build on this
module, never the other way round.
"""

import abc

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import errors
from resnet_jax.data import catalog

HOLDOUT = 'holdout'  # Name of the held-out slice of the training split.
# What each random draw of a train step beyond the paper's folds into the
# step's key, one number per use, so that the draws stay apart and the
# paper's (crop, flip, lighting: the step's key itself) are the same whether
# an option is on or off.
KEY_STREAMS = {'mixing': 1, 'random_erasing': 2}


def check_dataset(inp: ml_collections.ConfigDict):
  """Fails fast, with the fix, if the `config.input` dataset cannot be read."""
  catalog.check_prepared(catalog.dataset_info(inp), inp.get('data_dir'))


class ProcessBlocks(grain.MapDataset):
  """This process's contiguous block of each global batch of `parent`.

  Global batch k is elements [k*B, (k+1)*B) of `parent` (B = local batch x
  process count); process p reads its slice [p*b, (p+1)*b) of it. So the
  global batch, and its order (which decides per-position device randomness
  such as crops, flips and lighting), is the same for any number of
  processes, and each process reads only its own examples.
  """

  def __init__(
    self, parent: grain.MapDataset, local_batch_size: int, process_index: int, process_count: int
  ):
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


class EvalView(abc.ABC):
  """One image as the evaluation's `center` protocol shows it to the net,
  made on the host from an image of any size (`Dataset.eval_view`)."""

  shape: tuple[int, int, int]  # (H, W, 3) of every view.

  @abc.abstractmethod
  def of_array(self, image: np.ndarray) -> np.ndarray:
    """The view of a uint8 RGB (H, W, 3) image: uint8 of `shape`."""

  @abc.abstractmethod
  def of_encoded(self, encoded: bytes) -> np.ndarray:
    """The view of an encoded image (JPEG, PNG, ...), decoded as the
    evaluation decodes the dataset's own: uint8 of `shape`."""


class Dataset(abc.ABC):
  """One dataset family's input pipeline, as the training loop sees it."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.info = catalog.dataset_info(config.input)

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
  def train_batches(self, local_batch_size: int, seed: int, process_index: int, process_count: int):
    """Endless `grain.IterDataset` of {'image': uint8, 'label': int32}, or of
    {'index': int32} into `resident_arrays()` if those are given (its
    iterators' get_state/set_state are the checkpointable position)."""

  def resident_arrays(self) -> dict[str, np.ndarray]:
    """The training split to keep on every device ({'image', 'label'}), or {}
    when the host sends whole batches."""
    return {}

  @abc.abstractmethod
  def eval_batches(
    self, split: str, view: str, local_batch_size: int, process_index: int, process_count: int
  ):
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

  def check_splits(self, splits=None):
    """ConfigError, before anything is compiled, unless each split the run
    reads (`splits`, default: training and evaluation) is in the dataset and
    holds examples, and its labels fit the model's outputs. Reads the
    dataset's metadata only, no examples."""
    inp = self.config.input
    for name in splits or ['train', *self.eval_splits()]:
      spec = self.tfds_split(name)
      try:
        count = catalog.split_size(inp, spec)
      except errors.ConfigError as e:
        raise errors.ConfigError(f'{self._split_field(name)}: {e}') from e
      if count == 0:
        raise errors.ConfigError(
          f'{self._split_field(name)}={spec!r} of {inp.dataset} holds no examples; '
          'choose a non-empty split or slice'
        )
    self.check_labels(self.info.num_classes)

  def check_labels(self, dataset_classes: int | None):
    """ConfigError unless labels 0..dataset_classes-1 fit the model's outputs."""
    outputs = self.config.model_options.get('num_classes') or self.info.num_classes
    if dataset_classes is not None and dataset_classes > outputs:
      raise errors.ConfigError(
        f'{self.config.input.dataset} has {dataset_classes} classes but the model '
        f'predicts {outputs}; set --config.model_options.num_classes={dataset_classes} '
        '(or leave it unset)'
      )

  def _split_field(self, name: str) -> str:
    """The config field that chose split `name`."""
    inp = self.config.input
    if name == self.info.eval_split:
      return '--config.input.eval_split'
    if name == 'train' and inp.get('train_split'):
      return '--config.input.train_split'
    return '--config.input.num_holdout'

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

  @classmethod
  @abc.abstractmethod
  def eval_view(cls, config: ml_collections.ConfigDict, norm_shapes: dict) -> EvalView:
    """The `center` evaluation view of one image, for a net trained with `config`.

    A class method: it reads no data, so that a checkpoint alone can predict.

    Args:
      config: the experiment config the net was trained with.
      norm_shapes: the shapes of the checkpoint's `normalization()` arrays.

    Returns:
      The family's `EvalView`.
    """

  @staticmethod
  @abc.abstractmethod
  def preprocess_train(rng: jax.Array, images: jax.Array, norm: dict, config) -> jax.Array:
    """Device side of training: uint8 batch -> float32 network input."""

  @staticmethod
  def preprocess_eval(images: jax.Array, norm: dict) -> jax.Array:
    """Device side of evaluation: uint8 views -> float32 network input."""
    return normalize(images, norm)


def eval_shard(
  n: int, process_index: int, process_count: int, local_batch_size: int
) -> tuple[int, int, int]:
  """This process's contiguous share [start, stop) of `n` evaluation examples,
  and the batch count every process uses (all run the same steps)."""
  per_process = -(-n // process_count)
  start = min(process_index * per_process, n)
  stop = min(start + per_process, n)
  return start, stop, max(1, -(-per_process // local_batch_size))


class ExampleCounter:
  """Counts how often each example of a split came in padded evaluation
  batches (by 'index'; 'mask' 0 is padding), to check each came as often as
  expected. With `num_examples` None it counts only the total."""

  def __init__(self, num_examples: int | None):
    self.num_examples = num_examples
    self.count = None if num_examples is None else np.zeros(num_examples, np.int64)
    self.total = 0

  def add(self, out: dict) -> np.ndarray:
    """Counts one batch's valid examples; returns their mask (True: not padding)."""
    valid = np.asarray(out['mask']) > 0
    self.total += int(valid.sum())
    if self.count is not None:
      index = np.asarray(out['index'])[valid]
      if index.size and (index.min() < 0 or index.max() >= self.num_examples):
        raise AssertionError(
          f'example index out of range [0, {self.num_examples}): {index.min()}..{index.max()}'
        )
      np.add.at(self.count, index, 1)
    return valid

  def check(self, times: int = 1, verb: str = 'counted'):
    """AssertionError unless every example was counted exactly `times` times."""
    if self.count is None:
      return
    wrong = np.flatnonzero(self.count != times)
    if wrong.size:
      raise AssertionError(
        f'{wrong.size} examples were {verb} {sorted(set(self.count[wrong].tolist()))} '
        f'times, expected {times} (e.g. example {wrong[0]})'
      )


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
