"""What a dataset is, read from its own metadata: classes, label names, splits,
sizes and the input family that serves it.

Any TFDS image-classification dataset (features `image` and `label`) is known
by name: its `dataset_info.json` (or, before it is prepared, its TFDS builder's
static metadata) gives the classes and splits; nothing is listed here. A
folder of images (`input.dataset='folder'`, `input.data_dir=ROOT`, see
`data.folder`) gives them from its class folders.

The family decides the pipeline (`data.create`):
- 'cifar': fixed-size small images decoded into memory, augmented on the
  device (section 4.2's recipe);
- 'imagenet': JPEGs of any size streamed through the ImageNet views on the
  host (section 3.4's recipe).
`config_lib.cifar10()` and `config_lib.imagenet()` set `input.family`; left
None it follows the images: fixed sizes of at most `SMALL_IMAGE_SIDE` pixels
are 'cifar', anything else 'imagenet'.
"""

import dataclasses
import functools
import os
import re
import sys

from etils import epath

from resnet_jax import errors

FAMILIES = ('cifar', 'imagenet')
FOLDER = 'folder'  # input.dataset of a folder of images (input.data_dir: its root).
SMALL_IMAGE_SIDE = 64
# The split a family reports on when the dataset has several: the paper's
# CIFAR test set, ImageNet's validation set.
_EVAL_SPLITS = {'cifar': ('test', 'validation', 'val'), 'imagenet': ('validation', 'val', 'test')}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the loop needs to know of a dataset before reading it."""

  name: str
  family: str  # 'cifar' or 'imagenet'
  num_classes: int
  class_names: tuple[str, ...] | None
  train_split: str
  eval_split: str  # The split results are reported on (CIFAR test, ImageNet validation).
  splits: dict  # split name -> examples; {} for a TFDS dataset not prepared yet.
  image_shape: tuple | None  # (H, W, 3), None or None sides when sizes vary.
  prepare: str  # How to get it, for error messages.

  @property
  def num_train(self) -> int | None:
    return self.splits.get(self.train_split)

  @property
  def num_eval(self) -> int | None:
    return self.splits.get(self.eval_split)

  def class_name(self, label: int) -> str:
    return self.class_names[label] if self.class_names else str(label)


def tfds_root(data_dir: str | None) -> str:
  """The TFDS data directory: `data_dir`, else TFDS_DATA_DIR, else TFDS's default."""
  return data_dir or os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def dataset_info(inp) -> DatasetInfo:
  """The `config.input` dataset's info (metadata only: no example is read).

  Raises:
    ConfigError: an unknown dataset, or one that is not image classification.
    MissingError, DataError: a folder dataset that is missing or malformed.
  """
  return _dataset_info(
    inp.dataset,
    inp.get('data_dir'),
    inp.get('family'),
    inp.get('eval_split'),
    bool(inp.get('skip_bad_images', False)),
  )


@functools.lru_cache(maxsize=32)
def _dataset_info(name, data_dir, family, eval_split, skip_bad) -> DatasetInfo:
  if family is not None and family not in FAMILIES:
    raise errors.ConfigError(
      f'input.family={family!r}; set --config.input.family to one of {FAMILIES} (or None)'
    )
  if name == FOLDER:
    return _folder_info(data_dir, family, eval_split, skip_bad)
  return _tfds_info(name, data_dir, family, eval_split)


def _folder_info(root, family, eval_split, skip_bad) -> DatasetInfo:
  if not root:
    raise errors.ConfigError(
      "input.dataset='folder' reads a folder of images: set --config.input.data_dir=ROOT "
      '(ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg)'
    )
  from resnet_jax.data import folder  # Only folder datasets need it.

  index = folder.index(root, skip_bad)
  if index.skipped:
    print(
      f'warning: skipped {len(index.skipped)} unreadable image files under {root} '
      f'(the first: {index.skipped[0]})',
      file=sys.stderr,
      flush=True,
    )
  splits = {split: index.num_examples(split) for split in index.split_names()}
  family = family or 'imagenet'
  shape = None
  if family == 'cifar' and splits.get('train'):
    # Held in memory at one size: the first image's (data.cifar checks the rest).
    from resnet_jax.data import imagenet_views

    shape = (*imagenet_views.image_size(index.source('train')[0]['image']), 3)
  return DatasetInfo(
    name=FOLDER,
    family=family,
    num_classes=len(index.class_names),
    class_names=tuple(index.class_names),
    train_split='train',
    eval_split=_eval_split(eval_split, splits, family, 'train'),
    splits=splits,
    image_shape=shape,
    prepare=f'check the folder {root} (ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg)',
  )


def _tfds_info(name, data_dir, family, eval_split) -> DatasetInfo:
  import tensorflow_datasets as tfds  # Heavy import; only where datasets are named.

  _check_data_dir(data_dir)
  root = tfds_root(data_dir)
  try:
    builder = tfds.builder(name, data_dir=root)
  except Exception as e:  # DatasetNotFoundError, or a registered builder that fails to load.
    raise errors.ConfigError(
      f'unknown dataset {name!r}: not a TFDS dataset, and not prepared under {root!r}. '
      'Set --config.input.dataset to a TFDS image-classification dataset (e.g. cifar10, '
      'cifar100, imagenet2012, food101), or to folder with --config.input.data_dir=ROOT '
      'for a folder of images; a dataset prepared elsewhere needs --config.input.data_dir'
    ) from e
  info = builder.info
  features = info.features
  label = features['label'] if 'label' in features else None
  if 'image' not in features or getattr(label, 'num_classes', None) is None:
    raise errors.ConfigError(
      f'dataset {name!r} is not image classification (it needs an image feature and a '
      f'class label; its features: {", ".join(features)}); choose another --config.input.dataset'
    )
  shape = tuple(features['image'].shape)
  if len(shape) == 3 and shape[-1] == 1:  # Greyscale: served as RGB (data.cifar).
    shape = (*shape[:2], 3)
  small = all(isinstance(s, int) and s <= SMALL_IMAGE_SIDE for s in shape[:2])
  family = family or ('cifar' if small else 'imagenet')
  splits = {split: int(v.num_examples) for split, v in info.splits.items()}
  names = tuple(label.names) if label.names else None
  if names == tuple(str(i) for i in range(label.num_classes)):
    names = None  # Placeholders of an unprepared builder, not the dataset's names.
  return DatasetInfo(
    name=name,
    family=family,
    num_classes=int(label.num_classes),
    class_names=names,
    train_split='train',
    eval_split=_eval_split(eval_split, splits, family, 'train'),
    splits=splits,
    image_shape=shape,
    prepare=_prepare_hint(name, root),
  )


def _eval_split(requested, splits, family, train_split) -> str:
  """The evaluation split's name: that of `input.eval_split` (its slice
  stripped) unless it slices the training split, else the family's first
  split present (the family's default when the splits are unknown)."""
  if requested:
    base = re.split(r'[\[+]', requested, maxsplit=1)[0].strip()
    if base and base != train_split:
      return base
  present = [s for s in _EVAL_SPLITS[family] if s in splits]
  return (present or [_EVAL_SPLITS[family][0]])[0]


def _prepare_hint(name, root) -> str:
  build = (
    f'prepare it once with `pip install -e ".[prepare]" && tfds build {name} '
    f'--file_format=array_record --data_dir={root}` (TensorFlow is needed only then)'
  )
  if name == 'imagenet2012':
    return (
      build.replace(' --file_format', ' --manual_dir=DIR --file_format')
      + ', DIR holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar; or extract it '
      'into class folders and use --config.input.dataset=folder (docs/own_data.md)'
    )
  return build + ', or set --config.input.data_dir (or TFDS_DATA_DIR) to where it is prepared'


def _check_data_dir(data_dir):
  # epath: data_dir may be gs:// or any other etils.epath path.
  if data_dir is not None and not epath.Path(data_dir).is_dir():
    raise errors.MissingError(
      f'data_dir {data_dir!r} does not exist. Point --config.input.data_dir '
      'at a TFDS data directory (one that holds a folder per dataset).'
    )


def split_size(inp, spec: str) -> int:
  """Examples in a split spec ('train', 'validation[:1000]', ...) of the
  `config.input` dataset, from its metadata; ConfigError if it has no such split."""
  if inp.dataset == FOLDER:
    from resnet_jax.data import folder

    return folder.index(inp.data_dir, bool(inp.get('skip_bad_images', False))).num_examples(spec)
  import tensorflow_datasets as tfds  # Heavy import; only where datasets are named.

  info = tfds.builder(inp.dataset, data_dir=tfds_root(inp.get('data_dir'))).info
  try:
    return info.splits[spec].num_examples
  except (ValueError, KeyError) as e:
    raise errors.ConfigError(
      f'{inp.dataset} has no split {spec!r} (its splits: {", ".join(info.splits)}; '
      "slices such as 'train[:1000]' are allowed)"
    ) from e


def check_prepared(info: DatasetInfo, data_dir: str | None):
  """MissingError, with the fix, unless the TFDS dataset's files are there."""
  if info.name == FOLDER:
    return
  _check_data_dir(data_dir)
  root = tfds_root(data_dir)
  if not info.splits or not epath.Path(root, info.name).is_dir():
    raise errors.MissingError(f'dataset {info.name!r} not found under {root!r}: {info.prepare}.')
