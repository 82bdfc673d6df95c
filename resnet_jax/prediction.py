"""Prediction: a trained net's classes for image files, encoded images or arrays.

`Predictor` holds a workdir's latest checkpoint on a device mesh and
preprocesses every image exactly as the evaluation's `center` protocol does,
with the view its dataset family's pipeline makes (`data.Dataset.eval_view`):

- ImageNet family: shorter side `eval.resize_size`, central `eval.crop_size`
  crop. Encoded images (files, bytes) go through the very functions of the
  evaluation pipeline (decoding at reduced DCT scale where that is enough), so
  a file predicted here reaches the net as the same pixels as when the
  evaluation reads it from a dataset; decoded arrays are resized and cropped
  without the DCT step.
- CIFAR family: the image at the training size (the checkpoint's per-pixel
  mean gives it); an image of another size is resized to it (area averaging).

Greyscale, RGBA and CMYK images become RGB. The normalisation is the
checkpoint's, on the device. Images are batched to a fixed size, padded and
sharded over the mesh's `data` axis, so one program serves every call.
Needs only a checkpoint: no dataset, optimizer or training loop.
"""

import concurrent.futures
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import config_lib, data, distributed, errors, trained_workdir
from resnet_jax.data import core as data_core
from resnet_jax.data import folder, imagenet_views


def read_image_file(path) -> bytes:
  """The bytes of an image file (local or any `etils.epath` path).

  Raises:
    MissingError: no such file.
    DataError: a directory, or a file that cannot be read.
  """
  file = epath.Path(path)
  try:
    return file.read_bytes()
  except FileNotFoundError as e:
    raise errors.MissingError(f'{path}: no such image file') from e
  except IsADirectoryError as e:
    raise errors.DataError(f'{path} is a directory, not an image file') from e
  except OSError as e:
    raise errors.DataError(f'{path} cannot be read ({e.strerror or errors.first_line(e)})') from e


def _is_path(image) -> bool:
  return isinstance(image, (str, os.PathLike))


def _is_encoded(image) -> bool:
  return isinstance(image, (bytes, bytearray, memoryview))


def _describe(image, index: int | None = None) -> str:
  """How error messages name an image: its path, else its position."""
  if _is_path(image):
    return os.fspath(image)
  what = 'encoded image' if _is_encoded(image) else 'image array'
  return what if index is None else f'{what} {index}'


def _rgb(image, name: str) -> np.ndarray:
  """A uint8 array as (H, W, 3) RGB: greyscale repeated, alpha dropped (as
  Pillow's `convert('RGB')` does for files)."""
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise errors.DataError(f'{name} is a {array.dtype} array; images are uint8 (0..255)')
  if array.ndim == 3 and array.shape[-1] in (1, 2):  # Grey, grey + alpha.
    array = array[..., 0]
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  elif array.ndim == 3 and array.shape[-1] == 4:  # RGBA.
    array = array[..., :3]
  if array.ndim != 3 or array.shape[-1] != 3 or not array.shape[0] or not array.shape[1]:
    raise errors.DataError(f'{name} has shape {array.shape}; expected (H, W, 3), (H, W) or RGBA')
  return array


def _check_batch_size(batch_size: int):
  if batch_size < 1:
    raise errors.ConfigError(f'batch_size={batch_size}; use a positive batch size')


class Predictor:
  """A trained net ready to classify images: preprocessing from its checkpoint."""

  def __init__(self, loaded: trained_workdir.LoadedWorkdir, *, batch_size: int = 64, mesh=None):
    """Places the net on `mesh` and prepares its preprocessing.

    Args:
      loaded: `trained_workdir.load_workdir(...)`'s net.
      batch_size: images per compiled call, rounded up to a multiple of the
        device count; a shorter batch is padded to it.
      mesh: the device mesh (default: `distributed.make_mesh()`, all devices).
    """
    _check_batch_size(batch_size)
    self.mesh = mesh or distributed.make_mesh()
    num_devices = self.mesh.devices.size
    self.batch_size = -(-batch_size // num_devices) * num_devices
    self.model, self.config, self.step = loaded.model, loaded.config, loaded.step
    self.family = config_lib.family(loaded.config)
    num_classes = self.model.num_classes
    names = loaded.class_names
    self.class_names: tuple[str, ...] = (
      tuple(names) if names and len(names) == num_classes else tuple(map(str, range(num_classes)))
    )
    replicated = NamedSharding(self.mesh, P())
    self._batch_sharding = NamedSharding(self.mesh, P('data'))
    self._variables = jax.device_put(loaded.variables, replicated)
    self._norm = jax.device_put(loaded.norm, replicated)
    norm_shapes = {k: tuple(v.shape) for k, v in loaded.norm.items()}
    self._view = data.DATASETS[self.family].eval_view(self.config, norm_shapes)
    self.view_shape = tuple(self._view.shape)
    self._forward = jax.jit(self._scores)

  @classmethod
  def from_workdir(
    cls, workdir, *, batch_size: int = 64, mesh=None, ema: bool = False
  ) -> 'Predictor':
    """The latest checkpoint of a training (or imported) workdir, ready to predict.

    Args:
      workdir: a workdir with `checkpoints/`, local or `gs://`.
      batch_size: images per compiled call (see `Predictor`).
      mesh: the device mesh (default: all devices).
      ema: the weights' moving average (of a run trained with `config.ema`)
        instead of the raw weights.

    Returns:
      The `Predictor`; its variables are restored straight onto the mesh.
    """
    _check_batch_size(batch_size)  # Before the restore: bad input fails fast.
    mesh = mesh or distributed.make_mesh()
    loaded = trained_workdir.load_workdir(workdir, sharding=NamedSharding(mesh, P()), ema=ema)
    return cls(loaded, batch_size=batch_size, mesh=mesh)

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  def _scores(self, variables, norm, images):
    x = data_core.normalize(images, norm)
    logits = self.model.apply(variables, x, train=False).astype(jnp.float32)
    return logits, jax.nn.softmax(logits)

  def view(self, image, name: str | None = None) -> np.ndarray:
    """The net's input view of one image (what the evaluation's center protocol sees).

    Args:
      image: a uint8 array (H, W, 3) of any size (greyscale (H, W) and RGBA
        too), encoded image bytes (JPEG, PNG, ...), or a file path.
      name: how errors name the image (default: its path, or its kind).

    Returns:
      uint8 array of `view_shape`.

    Raises:
      MissingError: a path to no file. DataError: an unreadable image.
    """
    name = name or _describe(image)
    if _is_path(image):
      image = read_image_file(image)
    if _is_encoded(image):
      return self._encoded_view(bytes(image), name)
    if not isinstance(image, np.ndarray):
      raise TypeError(f'{name}: expected a path, encoded bytes or a uint8 array, not {image!r:.80}')
    return self._view.of_array(_rgb(image, name))

  def _encoded_view(self, encoded: bytes, name: str) -> np.ndarray:
    try:
      return self._view.of_encoded(encoded)
    except PIL.Image.DecompressionBombError as e:
      raise errors.DataError(f'{name} is {imagenet_views.too_large_reason(e)}') from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types; one line instead.
      # The dataset's reasons where they apply: Pillow's name the stream, not the file.
      reason = folder.image_problem(encoded, encoded, len(encoded)) or errors.first_line(e)
      raise errors.DataError(f'{name} is not a readable image ({reason})') from e

  def _views(self, images) -> tuple[Sequence, bool]:
    """(the images, whether they already are views): a (N, H, W, 3) uint8
    array at the view size goes to the net as it is."""
    if isinstance(images, np.ndarray) or hasattr(images, '__array__'):
      array = np.asarray(images)
      if array.ndim == 4 and array.dtype == np.uint8 and array.shape[1:] == self.view_shape:
        return array, True
      if array.ndim != 4:
        raise errors.DataError(
          f'an image array batch has shape {array.shape}; expected (N, H, W, 3), '
          'or pass a list of images'
        )
      return list(array), False
    if _is_path(images) or _is_encoded(images):
      raise TypeError('expected a sequence of images; wrap a single image in a list')
    return list(images), False

  def _run(self, images) -> tuple[np.ndarray, np.ndarray]:
    """(logits, softmax scores), both float32 (N, C), of a batch of images."""
    items, ready = self._views(images)
    n, b = len(items), self.batch_size
    pending = []
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for start in range(0, n, b):
        chunk = items[start : start + b]
        batch = np.zeros((b,) + self.view_shape, np.uint8)  # Padding rows: dropped below.
        if ready:
          batch[: len(chunk)] = chunk
        else:
          names = [_describe(image, start + i) for i, image in enumerate(chunk)]
          for i, view in enumerate(pool.map(self.view, chunk, names)):
            batch[i] = view
        # Dispatch is asynchronous: the next chunk is decoded while this one runs.
        images_on_mesh = jax.device_put(batch, self._batch_sharding)
        pending.append(self._forward(self._variables, self._norm, images_on_mesh))
    if not pending:
      empty = np.zeros((0, self.num_classes), np.float32)
      return empty, empty
    logits, probs = (np.concatenate(parts)[:n] for parts in zip(*jax.device_get(pending)))
    return logits, probs

  def predict(self, images) -> np.ndarray:
    """The net's logits for a batch of images.

    Args:
      images: a uint8 (N, H, W, 3) array at `view_shape` (used as it is), or
        a sequence of images of any size, encoded bytes or paths (each made
        its `view`).

    Returns:
      float32 (N, C) logits (their softmax is the evaluation's center-protocol
      score).
    """
    return self._run(images)[0]

  def probabilities(self, images) -> np.ndarray:
    """float32 (N, C) softmax scores of `images` (as `predict` takes them)."""
    return self._run(images)[1]

  def classify(self, paths_or_images, top_k: int = 5) -> list[dict]:
    """The `top_k` classes of each image, most probable first.

    Args:
      paths_or_images: image paths, encoded images or arrays (as `predict`).
      top_k: classes per image (at most the net's classes).

    Returns:
      One dict per image, in order: {'file': path} for a path, else
      {'index': position}, and 'top_k': [{'label', 'name', 'probability'}].
    """
    if top_k < 1:
      raise errors.ConfigError(f'top_k={top_k}; ask for at least one class')
    items, ready = self._views(paths_or_images)
    probs = self.probabilities(items if ready else list(items))
    k = min(top_k, self.num_classes)
    out = []
    for i, (item, p) in enumerate(zip(items, probs)):
      order = np.argsort(-p, kind='stable')[:k]
      where = {'file': os.fspath(item)} if not ready and _is_path(item) else {'index': i}
      ranked = [
        {'label': int(c), 'name': self.class_names[c], 'probability': float(p[c])} for c in order
      ]
      out.append({**where, 'top_k': ranked})
    return out
