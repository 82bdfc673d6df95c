"""A folder of images as a dataset: ROOT/train/<class>/*, ROOT/val/<class>/*.

Layout: `ROOT/train/<class>/` holds the training images of each class (JPEG
or PNG, by suffix, compared case-insensitively; class folders may nest
subfolders, read recursively as torchvision's ImageFolder does). The
evaluation split is `ROOT/val/` (or `validation/`, or `test/`) in the same
layout; it is optional. Other files (`.txt`, ...) and hidden files and
folders (`.ipynb_checkpoints`, ...) are ignored.

Labels: the position of the class folder's name among the sorted names of
`ROOT/train`'s class folders (for ImageNet's wnids: TFDS imagenet2012's and
torchvision's order). An evaluation split may lack classes, but a class
folder there that train lacks is an error: it has no label.

No silent wrong label: labels always come from the folder names, so a class
is never dropped. A class folder without any image file is an error (a
half-copied dataset, most likely) naming the folder; remove the folder or
fill it. With `skip_bad=True`, unreadable files are left out and listed in
`FolderIndex.skipped`; a class whose every file is unreadable stays a class
(with no examples), so the other labels do not move.

Files (`find_images`, also `predict`'s rule for folders): symlinks are
followed, each real folder entered once (a link to `.` or a parent is no
loop); an image-named FIFO, socket or device is refused when listed, never
opened; any file name is taken, UTF-8 or not (`os.fsencode` gives its bytes).

Order: each split is sorted, then permuted by a keyed hash of each file's
relative path (`ORDER_SEED`), so that slices such as a held-out `train[-500:]`
mix all classes, as TFDS's shuffled records do, and the order is the same on
every machine, process and NumPy version: it depends only on the files.

Unreadable files: every read checks the bytes cheaply (the header parses, a
JPEG ends with its end-of-image marker, a PNG with its IEND chunk, the file is
not empty); a bad file raises `errors.DataError` naming it. An image of more
pixels than Pillow decodes (its decompression-bomb guard) is named as such,
and never skipped as unreadable.
"""

import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import re
import stat

import numpy as np
import PIL.Image

from resnet_jax import errors
from resnet_jax.data import imagenet_views

TRAIN_DIR = 'train'
EVAL_DIRS = ('val', 'validation', 'test')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')  # Compared case-insensitively (ImageNet uses .JPEG).
ORDER_SEED = 0  # Keys the hash that orders each split.
LAYOUT = 'ROOT/train/<class>/*.jpg and ROOT/val/<class>/*.jpg'
SKIP_HINT = 'fix or remove it, or set --config.input.skip_bad_images=True to skip such files'

# A JPEG header (SOF) usually sits in the first few KiB, after EXIF/ICC data;
# a check that cannot parse this much reads the whole file before judging.
_HEAD_BYTES = 64 * 1024
_TAIL_BYTES = 4096
_JPEG_START = b'\xff\xd8'
_PNG_START = b'\x89PNG\r\n\x1a\n'
_JPEG_END = b'\xff\xd9'  # EOI marker.
_PNG_END = b'IEND\xaeB`\x82'  # The IEND chunk's type and CRC.
_PADDING = b'\x00 \t\r\n'  # Some writers pad after the end marker.
_CHECK_THREADS = 32  # Checking is bound by file reads, not by the GIL.
_CHECK_CHUNK = 256

# TFDS's split grammar: <name>[<from>:<to>], bounds int or percent.
_SPEC_RE = re.compile(r'^(?P<name>[\w-]+)(\[(?P<selector>[\d\w%:.-]+)\])?$')
_BOUND_RE = re.compile(r'^((?P<val>-?[\d_.]+)(?P<unit>%)?)?$')


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """The files and labels of an image folder, split by split."""

  root: str
  class_names: tuple[str, ...]  # Sorted names of ROOT/train's class folders; label = position.
  files: dict[str, tuple[str, ...]]  # Split folder name -> paths relative to root, in order.
  labels: dict[str, np.ndarray]  # Split -> int64 labels, aligned with files.
  skipped: tuple[str, ...]  # Relative paths left out as unreadable (skip_bad=True only).

  def split_names(self) -> tuple[str, ...]:
    """The splits on disk, train first."""
    return tuple(self.files)

  def num_examples(self, split: str) -> int:
    """Examples in a split or TFDS-style slice of one ('train[:-500]')."""
    _, start, stop = self._resolve(split)
    return len(range(start, stop))

  def source(self, spec: str) -> 'FolderSource':
    """A random-access data source of a split or slice, like TFDS's.

    Args:
      spec: TFDS split string: 'train', 'val[:100]', 'train[-500:]', 'train[10%:20%]'.

    Returns:
      A `FolderSource` of {'image': encoded bytes, 'label', 'file_name'}.
    """
    name, start, stop = self._resolve(spec)
    return FolderSource(
      self.root, self.files[name][start:stop], self.labels[name][start:stop], spec
    )

  def _no_eval_folder_hint(self, name: str) -> str:
    """Why an evaluation split is missing and the fixes, when ROOT has no
    evaluation folder at all (the recipes evaluate on one by default)."""
    if name not in EVAL_DIRS or any(d in self.files for d in EVAL_DIRS):
      return ''
    return (
      f': {self.root} has no {EVAL_DIRS[0]}/ folder (nor {"/ or ".join(EVAL_DIRS[1:])}/); add '
      f'{EVAL_DIRS[0]}/<class>/ folders, or evaluate on held-out training images with '
      "--config.input.train_split='train[:-500]' --config.input.eval_split='train[-500:]' "
      "(with holdout_validation=True, only --config.input.eval_split='train[-N:]', "
      'N=num_holdout)'
    )

  def _resolve(self, spec: str) -> tuple[str, int, int]:
    """(split, start, stop) of a TFDS split string, with TFDS's semantics
    (percent bounds rounded to the closest example)."""

    def fail(reason):
      raise errors.ConfigError(
        f'split {spec!r} of the image folder {self.root}: {reason}; its splits: '
        f"{', '.join(self.files)} (one split, optionally sliced as 'train[:-500]' "
        "or 'val[:10%]')"
      )

    match = _SPEC_RE.match(str(spec))
    if not match:
      fail('not a split name with an optional [from:to] slice')
    name, selector = match['name'], match['selector']
    if name not in self.files:
      fail(f'there is no {name!r} split{self._no_eval_folder_hint(name)}')
    n = len(self.files[name])
    if selector is None:
      return name, 0, n
    bounds = [_BOUND_RE.match(b) for b in selector.split(':')]
    if len(bounds) != 2 or not all(bounds) or not any(b['val'] for b in bounds):
      fail('the slice must be [from:to] with int or percent bounds')
    percent = any(b['unit'] for b in bounds)
    out = []
    for bound, default in zip(bounds, (0, n)):
      value = default
      if bound['val'] is not None:
        try:
          value = float(bound['val']) if percent else int(bound['val'])
        except ValueError:
          fail(f'{bound["val"]!r} is not {"a number" if percent else "an integer"}')
        if percent:
          value = round(value * n / 100)
      if abs(value) > n:
        fail(f'the slice [{selector}] does not fit its {n} examples')
      out.append(value + n if value < 0 else value)
    return name, out[0], out[1]


class FolderSource:
  """Random access to the images of one split (slice) of an image folder.

  Each read checks the bytes cheaply (see `image_problem`) and raises
  `errors.DataError` naming the file if they are not a whole image.
  """

  def __init__(self, root: str, files: tuple[str, ...], labels: np.ndarray, spec: str = ''):
    self.root, self.files, self.labels, self.spec = root, files, labels, spec

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict:
    """{'image': encoded bytes, 'label': np.int64, 'file_name': relative path as bytes}."""
    index = int(index)
    if not -len(self.files) <= index < len(self.files):
      raise IndexError(f'index {index} out of range for {len(self.files)} examples')
    name = self.files[index]
    path = os.path.join(self.root, name)
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise errors.DataError(f'unreadable image {path}: {e.strerror}; {SKIP_HINT}') from None
    try:
      problem = image_problem(data, data, len(data))
    except PIL.Image.DecompressionBombError as e:
      raise _too_large(path, e) from None
    if problem:
      raise errors.DataError(f'unreadable image {path}: {problem}; {SKIP_HINT}')
    return {'image': data, 'label': np.int64(self.labels[index]), 'file_name': os.fsencode(name)}

  def __getitems__(self, indices) -> list[dict]:
    return [self[i] for i in indices]

  def __repr__(self):
    return f'FolderSource({self.root!r}, {self.spec!r}, {len(self)} examples)'


def image_problem(head: bytes, tail: bytes, size: int) -> str | None:
  """Why an encoded image is not a whole JPEG or PNG, or None if it looks whole.

  Args:
    head: the file's first bytes (enough for its header), or all of it.
    tail: its last bytes, or all of it (only the padding is scanned back over).
    size: its size in bytes.

  Returns:
    A short reason ('empty file', 'truncated JPEG ...'), or None.

  Raises:
    PIL.Image.DecompressionBombError: a header of more pixels than Pillow decodes.
  """
  if size == 0:
    return 'empty file (0 bytes)'
  try:
    imagenet_views.image_size(head)
  except PIL.Image.DecompressionBombError:
    raise  # A whole image, too large to decode: the caller names it (`_too_large`).
  except Exception:  # Any parse failure (libjpeg's, Pillow's) means the same: unreadable.
    return 'its header is not that of a JPEG or PNG image'
  end = tail.rstrip(_PADDING)
  if head.startswith(_JPEG_START) and not end.endswith(_JPEG_END):
    return 'truncated JPEG (no end-of-image marker)'
  if head.startswith(_PNG_START) and not end.endswith(_PNG_END):
    return 'truncated PNG (no IEND chunk)'
  return None


def _too_large(path: str, error: PIL.Image.DecompressionBombError) -> errors.DataError:
  """The error for a whole image that Pillow refuses to decode as too large:
  not unreadable, so not one that skip_bad may leave out."""
  return errors.DataError(f'image {path} is {imagenet_views.too_large_reason(error)}')


def _file_problem(path: str) -> str | None:
  """`image_problem` of a file, reading only its head and tail where that suffices."""
  try:
    with open(path, 'rb') as f:
      size = os.fstat(f.fileno()).st_size
      head = f.read(_HEAD_BYTES)
      if size > _HEAD_BYTES:
        f.seek(size - _TAIL_BYTES)
        tail = f.read()
      else:
        tail = head[-_TAIL_BYTES:]
      if image_problem(head, tail, size) is None:
        return None
      # A header past the head, or padding longer than the tail, look bad in
      # part: judge such a file (bad ones are rare) on all of its bytes.
      f.seek(0)
      data = f.read()
    return image_problem(data, data, len(data))
  except OSError as e:
    return e.strerror or str(e)
  except PIL.Image.DecompressionBombError as e:
    raise _too_large(path, e) from None


def is_image_name(name: str) -> bool:
  """Whether a file name is an image's by the folder rule: an image suffix, not hidden."""
  return not name.startswith('.') and name.lower().endswith(IMAGE_SUFFIXES)


_SPECIAL_KINDS = (
  (stat.S_ISFIFO, 'a named pipe (FIFO)'),
  (stat.S_ISSOCK, 'a socket'),
  (stat.S_ISCHR, 'a character device'),
  (stat.S_ISBLK, 'a block device'),
)


def _special_kind(entry: os.DirEntry) -> str | None:
  """What an entry that is neither a folder nor a regular file is; None for a
  broken symlink, left to fail (or be skipped) when read like any missing file."""
  try:
    mode = entry.stat().st_mode
  except OSError:
    return None
  return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), 'a special file')


def _not_regular(path: str, kind: str) -> errors.DataError:
  """The error for an image-named path that is no regular file: reading it could
  block for ever (a FIFO) or never end (a device)."""
  return errors.DataError(
    f'{path} is {kind}, not a regular file: remove it (or replace it by the image)'
  )


def _real_id(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_dev, st.st_ino


def find_images(top: str, seen: set | None = None) -> list[str]:
  """Image files under a folder, recursively, as paths relative to it.

  The dataset's file rule, shared with `predict`: an image suffix (any case),
  no hidden file or folder, regular files only; symlinks are followed, but a
  real folder is entered once (a link to `.` or to a parent is no loop).

  Args:
    top: the folder; it is listed even if in `seen`.
    seen: (st_dev, st_ino) of real folders not to enter; updated with those
      entered (share it to visit each folder once across several tops).

  Returns:
    The files' paths relative to `top`, in walk order (sorted per folder).

  Raises:
    errors.DataError: an image-named FIFO, socket or device (never opened), or
      a folder that cannot be listed.
  """
  seen = set() if seen is None else seen
  out, stack = [], ['']
  while stack:
    rel = stack.pop()
    path = os.path.join(top, rel)
    try:
      seen.add(_real_id(path))
      with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
      raise errors.DataError(
        f'cannot list {path}: {e.strerror or e}; fix its permissions or remove it'
      ) from None
    subdirs = []
    for entry in entries:
      if entry.name.startswith('.'):
        continue
      if entry.is_dir():
        subdirs.append(entry)
      elif is_image_name(entry.name):
        kind = None if entry.is_file() else _special_kind(entry)
        if kind:
          raise _not_regular(entry.path, kind)
        out.append(rel + entry.name)
    for entry in reversed(subdirs):  # Depth first, in sorted order.
      real = _real_id(entry.path)
      if real not in seen:
        seen.add(real)
        stack.append(rel + entry.name + os.sep)
  return out


def _list_split(root: str, split: str) -> dict[str, list[str]]:
  """{class name: its image files} of ROOT/split, each class holding some."""
  path = os.path.join(root, split)
  entries = [
    e for e in sorted(os.scandir(path), key=lambda e: e.name) if not e.name.startswith('.')
  ]
  class_dirs = [e for e in entries if e.is_dir()]
  loose = [e.name for e in entries if not e.is_dir() and is_image_name(e.name)]
  if loose:
    hint = " (scripts/sort_imagenet_val.py sorts ImageNet's)" if split != TRAIN_DIR else ''
    raise errors.DataError(
      f'{path} holds image files directly (e.g. {loose[0]}), not in class folders: move '
      f'them into {path}/<class>/{hint}; the layout is {LAYOUT}'
    )
  if not class_dirs:
    fix = (
      'put class folders in it'
      if split == TRAIN_DIR
      else 'remove the empty folder or put class folders in it'
    )
    raise errors.DataError(f'{path} holds no class folders: {fix}; the layout is {LAYOUT}')
  # Folders a class folder's links lead back to are not entered again: no loop,
  # and no image counted under two classes.
  seen = {_real_id(p) for p in (root, path, *(e.path for e in class_dirs))}
  classes = {}
  for entry in class_dirs:
    prefix = os.path.join(split, entry.name) + os.sep
    classes[entry.name] = [prefix + f for f in find_images(entry.path, seen)]
    if not classes[entry.name]:
      raise errors.DataError(
        f'class folder {entry.path} holds no image files '
        f'({", ".join(IMAGE_SUFFIXES)}): add its images or remove the folder'
      )
  return classes


def _order(files: list[str]) -> list[int]:
  """A fixed pseudo-random order of the files, from their names alone.

  A keyed hash rather than a seeded NumPy permutation: NumPy does not promise
  the same permutation across versions, and a held-out slice must be the same
  examples for every process and every later evaluation.
  """
  key = str(ORDER_SEED).encode()
  digests = [hashlib.blake2b(os.fsencode(f), digest_size=8, key=key).digest() for f in files]
  return sorted(range(len(files)), key=lambda i: (digests[i], files[i]))


def index(root: str, skip_bad: bool = False) -> FolderIndex:
  """Lists (and with skip_bad, checks) an image folder; cached per (root, skip_bad).

  Args:
    root: the folder holding train/ and optionally val/ (validation/, test/).
    skip_bad: check every file (its header and tail) and leave out unreadable
      ones (listed in `skipped`) instead of failing when one is read.

  Returns:
    The folder's `FolderIndex`.

  Raises:
    errors.MissingError: root or root/train is missing.
    errors.DataError: a layout that gives no sure labels (see the module doc).
  """
  if not root:
    raise errors.ConfigError(
      f'input.dataset=folder needs --config.input.data_dir=ROOT, a folder laid out as {LAYOUT}'
    )
  return _index(os.path.abspath(os.path.expanduser(root)), bool(skip_bad))


@functools.cache
def _index(root: str, skip_bad: bool) -> FolderIndex:
  if not os.path.isdir(root):
    raise errors.MissingError(
      f'image folder {root} does not exist: point --config.input.data_dir at a folder '
      f'laid out as {LAYOUT}'
    )
  if not os.path.isdir(os.path.join(root, TRAIN_DIR)):
    raise errors.MissingError(
      f'{root} has no {TRAIN_DIR}/ folder: an image folder dataset is laid out as {LAYOUT} '
      f'(val/ may be named {"/ or ".join(EVAL_DIRS[1:])}/, or be absent); point '
      '--config.input.data_dir at such a ROOT'
    )
  splits = [TRAIN_DIR] + [d for d in EVAL_DIRS if os.path.isdir(os.path.join(root, d))]
  listed = {split: _list_split(root, split) for split in splits}
  class_names = tuple(listed[TRAIN_DIR])  # Sorted by _list_split.
  labels_of = {name: label for label, name in enumerate(class_names)}
  for split in splits[1:]:
    for name in listed[split]:
      if name not in labels_of:
        raise errors.DataError(
          f'class folder {os.path.join(root, split, name)} is not a class of '
          f'{os.path.join(root, TRAIN_DIR)} (labels come from its class folders); add '
          f'{TRAIN_DIR}/{name}, or rename or remove {split}/{name}'
        )
  skipped = set()
  if skip_bad:
    every = [f for split in splits for files in listed[split].values() for f in files]

    def bad(start):  # A chunk per task: a million futures would hold ~1 GB.
      chunk = every[start : start + _CHECK_CHUNK]
      return [f for f in chunk if _file_problem(os.path.join(root, f))]

    with concurrent.futures.ThreadPoolExecutor(_CHECK_THREADS) as pool:
      chunks = pool.map(bad, range(0, len(every), _CHECK_CHUNK))
      skipped = {f for chunk in chunks for f in chunk}
  files, labels = {}, {}
  for split in splits:
    pairs = [
      (f, labels_of[name])
      for name, names in listed[split].items()
      for f in sorted(names)
      if f not in skipped
    ]
    order = _order([f for f, _ in pairs])
    files[split] = tuple(pairs[i][0] for i in order)
    labels[split] = np.array([pairs[i][1] for i in order], np.int64)
  return FolderIndex(root, class_names, files, labels, tuple(sorted(skipped)))
