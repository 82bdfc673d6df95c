"""ImageNet training views on the host, in numpy: the paper's and Inception's.

- `train_example`: section 3.4's scale augmentation (shorter side S ~
  U[256, 480], a random 224 square, a flip).
- `resized_crop_example`: Inception's random-resized crop of later recipes
  (torchvision's RandomResizedCrop: a random part of the image of 8-100% of
  its area and aspect 3/4-4/3, resized to the crop, and a flip).

Each draws its view from the JPEG header's size first, so that the image is
decoded at the smallest DCT scale that still covers the view
(`imagenet_views.decode`). Knows nothing of Grain or the devices.
"""

import dataclasses
import math

import cv2
import numpy as np

from resnet_jax.data.imagenet_views import (
  CROP_SIZE,
  DCT_FACTORS,
  decode,
  image_size,
  interpolation,
  resized_shape,
)

TRAIN_SCALE_RANGE = (256, 480)  # Section 3.4: shorter side in [256, 480].


@dataclasses.dataclass(frozen=True)
class TrainCrop:
  """One draw of the training view, in the coordinates of the resized image."""

  scale: int  # S, the resized shorter side.
  resized_hw: tuple[int, int]  # The whole image resized to shorter side S.
  top: int  # Crop offset in the resized image.
  left: int
  size: int  # Crop side.
  flip: bool


def sample_train_crop(
  h: int,
  w: int,
  rng: np.random.Generator,
  crop_size: int = CROP_SIZE,
  scale_range: tuple[int, int] = TRAIN_SCALE_RANGE,
) -> TrainCrop:
  """Draws the section 3.4 view of an h x w image: S, crop offset, flip.

  Args:
    h, w: the original image size.
    rng: the example's generator.
    crop_size: crop side (224).
    scale_range: (min, max) S, inclusive; min must be >= crop_size.

  Returns:
    The drawn `TrainCrop`.
  """
  if scale_range[0] < crop_size or scale_range[0] > scale_range[1]:
    raise ValueError(f'scale_range {scale_range} must satisfy crop_size={crop_size} <= min <= max')
  scale = int(rng.integers(scale_range[0], scale_range[1], endpoint=True))
  rh, rw = resized_shape(h, w, scale)
  top = int(rng.integers(0, rh - crop_size, endpoint=True))
  left = int(rng.integers(0, rw - crop_size, endpoint=True))
  flip = bool(rng.integers(0, 2))
  return TrainCrop(scale, (rh, rw), top, left, crop_size, flip)


def render_train_crop(image: np.ndarray, crop: TrainCrop) -> np.ndarray:
  """Cuts a `TrainCrop` out of an image, resampling only the crop window.

  The window is mapped back to `image` and rounded to whole pixels there (a
  sub-pixel shift and a <1% change of S, immaterial for augmentation), then
  resized to the crop: cheaper than an exact cv2.warpAffine and than
  resizing the whole image (docs/speed.md).

  Args:
    image: uint8 (H, W, 3): the original image, or the same image decoded at
      reduced DCT scale (coordinates are rescaled to its size).
    crop: the view, drawn for the original image's size.

  Returns:
    uint8 (size, size, 3): the crop of the image resized to crop.resized_hw.
  """
  # The box is in the resized image's pixels; `image` has (ih / rh, iw / rw)
  # pixels per pixel of it, which sets the interpolation.
  (ih, iw), (rh, rw) = image.shape[:2], crop.resized_hw
  box = (crop.top, crop.left, crop.size, crop.size)
  return _cut_and_resize(image, box, crop.resized_hw, crop.size, crop.flip, max(ih / rh, iw / rw))


def train_view(
  image: np.ndarray,
  rng: np.random.Generator,
  crop_size: int = CROP_SIZE,
  scale_range: tuple[int, int] = TRAIN_SCALE_RANGE,
) -> np.ndarray:
  """The paper's training view (section 3.4) of a decoded image.

  The shorter side is resized to S ~ U{scale_range} (inclusive), a random
  crop_size square is cut out and flipped horizontally with probability 1/2.
  Only the crop window is resampled (bilinear; area average when shrinking
  2x or more).

  Args:
    image: uint8 (H, W, 3).
    rng: the example's generator.
    crop_size: output side.
    scale_range: (min, max) S.

  Returns:
    uint8 (crop_size, crop_size, 3).
  """
  crop = sample_train_crop(*image.shape[:2], rng, crop_size, scale_range)
  return render_train_crop(image, crop)


def train_example(
  jpeg: bytes,
  rng: np.random.Generator,
  crop_size: int = CROP_SIZE,
  scale_range: tuple[int, int] = TRAIN_SCALE_RANGE,
) -> np.ndarray:
  """`train_view` straight from the JPEG, decoding at reduced size if allowed.

  S is drawn from the header's size first, so the JPEG is decoded at the
  smallest 1/2^k scale whose shorter side is still >= S. Draws the same
  view as `train_view(decode(jpeg), rng, ...)`.

  Args:
    jpeg: encoded image.
    rng: the example's generator.
    crop_size: output side.
    scale_range: (min, max) S.

  Returns:
    uint8 (crop_size, crop_size, 3).
  """
  h, w = image_size(jpeg)
  crop = sample_train_crop(h, w, rng, crop_size, scale_range)
  return render_train_crop(decode(jpeg, min_shorter_side=crop.scale), crop)


# torchvision's RandomResizedCrop defaults (Inception's crop, Szegedy et al. 2015).
CROP_AREA_RANGE = (0.08, 1.0)  # Fraction of the image's area.
CROP_ASPECT_RANGE = (3 / 4, 4 / 3)  # Width / height.
RESIZED_CROP_TRIES = 10


@dataclasses.dataclass(frozen=True)
class ResizedCrop:
  """One draw of the Inception-style training view, in the original image's pixels."""

  image_hw: tuple[int, int]  # The original image's size.
  top: int
  left: int
  height: int  # The box, resized to size x size.
  width: int
  size: int
  flip: bool


def sample_resized_crop(
  h: int,
  w: int,
  rng: np.random.Generator,
  size: int = CROP_SIZE,
  area_range: tuple[float, float] = CROP_AREA_RANGE,
  aspect_range: tuple[float, float] = CROP_ASPECT_RANGE,
) -> ResizedCrop:
  """Draws torchvision's `RandomResizedCrop` box of an h x w image, then a flip.

  `RandomResizedCrop.get_params`: up to 10 tries of an area fraction
  U(area_range) and an aspect ratio (width / height) log-uniform in
  aspect_range, sides rounded; the first box that fits is placed uniformly.
  If none fits: the centred box of the whole image, its aspect ratio clamped
  to aspect_range. Then a horizontal flip with probability 1/2.

  Args:
    h, w: the original image size.
    rng: the example's generator.
    size: output side.
    area_range: (min, max) fraction of the image's area.
    aspect_range: (min, max) width / height.

  Returns:
    The drawn `ResizedCrop`.
  """
  top, left, height, width = _resized_crop_box(h, w, rng, area_range, aspect_range)
  flip = bool(rng.integers(0, 2))
  return ResizedCrop((h, w), top, left, height, width, size, flip)


def _resized_crop_box(h, w, rng, area_range, aspect_range) -> tuple[int, int, int, int]:
  log_low, log_high = math.log(aspect_range[0]), math.log(aspect_range[1])
  for _ in range(RESIZED_CROP_TRIES):
    area = h * w * rng.uniform(area_range[0], area_range[1])
    aspect = math.exp(rng.uniform(log_low, log_high))
    # round() halves to even, as torchvision's (Python's) does.
    width, height = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
    if 0 < width <= w and 0 < height <= h:
      top = int(rng.integers(0, h - height, endpoint=True))
      left = int(rng.integers(0, w - width, endpoint=True))
      return top, left, height, width
  return _center_box(h, w, aspect_range)


def _center_box(h: int, w: int, aspect_range) -> tuple[int, int, int, int]:
  """torchvision's fallback: the whole image, cut to the nearest allowed aspect."""
  low, high = min(aspect_range), max(aspect_range)
  width, height = w, h
  if w / h < low:
    height = round(w / low)
  elif w / h > high:
    width = round(h * high)
  return (h - height) // 2, (w - width) // 2, height, width


def render_resized_crop(image: np.ndarray, crop: ResizedCrop) -> np.ndarray:
  """Cuts a `ResizedCrop` out of an image and resizes it to size x size.

  Args:
    image: uint8 (H, W, 3): the original image, or the same image decoded at
      reduced DCT scale (the box is rescaled to its size and rounded to its
      pixels, as `render_train_crop` does: a sub-pixel shift).
    crop: the view, drawn for the original image's size.

  Returns:
    uint8 (size, size, 3), bilinear (area average when shrinking 2x or more).
  """
  box = (crop.top, crop.left, crop.height, crop.width)
  return _cut_and_resize(image, box, crop.image_hw, crop.size, crop.flip, shrink=None)


def _cut_and_resize(image, box, box_image_hw, size: int, flip: bool, shrink):
  """The (top, left, height, width) `box`, drawn on an image of
  `box_image_hw`, mapped to `image`'s pixels (rounded, at least one pixel),
  resized to size x size and flipped if asked. `shrink`: image pixels per
  output pixel for the interpolation (None: the cut window's)."""
  ih, iw = image.shape[:2]
  sy, sx = ih / box_image_hw[0], iw / box_image_hw[1]
  top, left, height, width = box
  y0, x0 = round(top * sy), round(left * sx)
  y1 = min(ih, max(y0 + 1, round((top + height) * sy)))
  x1 = min(iw, max(x0 + 1, round((left + width) * sx)))
  if shrink is None:
    shrink = max(y1 - y0, x1 - x0) / size
  out = cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=interpolation(shrink))
  return cv2.flip(out, 1) if flip else out


def resized_crop_view(
  image: np.ndarray,
  rng: np.random.Generator,
  size: int = CROP_SIZE,
  area_range: tuple[float, float] = CROP_AREA_RANGE,
  aspect_range: tuple[float, float] = CROP_ASPECT_RANGE,
) -> np.ndarray:
  """The Inception-style training view of a decoded image: torchvision's
  `RandomResizedCrop(size, area_range, aspect_range)` and a random flip.

  Args:
    image: uint8 (H, W, 3).
    rng: the example's generator.
    size: output side.
    area_range, aspect_range: see `sample_resized_crop`.

  Returns:
    uint8 (size, size, 3).
  """
  crop = sample_resized_crop(*image.shape[:2], rng, size, area_range, aspect_range)
  return render_resized_crop(image, crop)


def resized_crop_example(
  jpeg: bytes,
  rng: np.random.Generator,
  size: int = CROP_SIZE,
  area_range: tuple[float, float] = CROP_AREA_RANGE,
  aspect_range: tuple[float, float] = CROP_ASPECT_RANGE,
) -> np.ndarray:
  """`resized_crop_view` straight from the JPEG, decoding at reduced size if allowed.

  The box is drawn from the header's size first; the JPEG is then decoded at
  the smallest 1/2^k scale at which both of the box's sides still span at
  least `size` pixels, so that the resize never enlarges what decoding
  shrank. Draws the same view as `resized_crop_view(decode(jpeg), rng, ...)`.

  Args:
    jpeg: encoded image.
    rng: the example's generator.
    size: output side.
    area_range, aspect_range: see `sample_resized_crop`.

  Returns:
    uint8 (size, size, 3).
  """
  h, w = image_size(jpeg)
  crop = sample_resized_crop(h, w, rng, size, area_range, aspect_range)
  shorter_box = min(crop.height, crop.width)
  f = next((f for f in DCT_FACTORS if shorter_box // f >= size), 1)
  # The decoded shorter side ceil(min(h, w) / f) selects exactly the 1/f scale.
  return render_resized_crop(decode(jpeg, min_shorter_side=-(-min(h, w) // f)), crop)
