"""ImageNet views on the host: decoding and the paper's crops, in numpy.

Decoding uses simplejpeg at a reduced DCT scale where a view needs fewer
pixels (Pillow for what it cannot read); resizing and cropping use OpenCV.
The views: the training view of section 3.4 (scale augmentation, 224 crop,
flip) and the Inception-style one of later recipes (torchvision's
RandomResizedCrop and a flip), the center and 10-crop test views, and the
whole-image views of the multi-scale test on canvas buckets. Knows nothing of
Grain or the devices.
"""

import dataclasses
import io
import math
import os
import re
import sys

import cv2
import numpy as np
import PIL.Image
import simplejpeg

TRAIN_SCALE_RANGE = (256, 480)  # Section 3.4: shorter side in [256, 480].
CROP_SIZE = 224
EVAL_RESIZE = 256  # 10-crop testing at shorter side 256.
VIEWS = {'center': 1, 'ten_crop': 10}
# Longer side / shorter side of the multi-scale canvas buckets; beyond the
# last, the ratio doubles (4, 8, 16, ...).
CANVAS_ASPECTS = (1.0, 4 / 3, 3 / 2, 2.0, 3.0, 4.0)
CANVAS_MULTIPLE = 32
DCT_FACTORS = (8, 4, 2, 1)  # libjpeg's power-of-two scaled IDCTs.


# Pillow's modes of 16-bit greyscale PNGs ('I' in older Pillows).
_WIDE_GREY_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


# Raises Pillow's decompression-bomb guard (`PIL.Image.MAX_IMAGE_PIXELS`) in
# every process that decodes: Grain's worker processes start afresh, but
# inherit the environment. A number of pixels, or 'none' for no limit.
MAX_PIXELS_VARIABLE = 'RESNET_JAX_MAX_IMAGE_PIXELS'


def set_pixel_limit(environ=os.environ):
  """Applies `MAX_PIXELS_VARIABLE` to Pillow, if set (done at import)."""
  value = environ.get(MAX_PIXELS_VARIABLE, '').strip().lower()
  if not value:
    return
  try:
    PIL.Image.MAX_IMAGE_PIXELS = None if value == 'none' else int(value)
  except ValueError:
    print(
      f'warning: {MAX_PIXELS_VARIABLE}={value!r} is neither a number of pixels nor '
      "'none': Pillow's limit stays as it is",
      file=sys.stderr,
    )


set_pixel_limit()


def _pillow_open(data: bytes) -> PIL.Image.Image:
  return PIL.Image.open(io.BytesIO(data))


def too_large_reason(error: PIL.Image.DecompressionBombError) -> str:
  """Why Pillow refused an image as too large, and the fixes, as one clause.

  Pillow refuses images of more than 2 x `PIL.Image.MAX_IMAGE_PIXELS`
  pixels (its decompression-bomb guard) before decoding them.
  """
  pixels = re.search(r'\((\d+) pixels\)', str(error))
  count = f'{int(pixels[1]):,} pixels, ' if pixels else ''
  limit = 2 * (PIL.Image.MAX_IMAGE_PIXELS or 0)
  return (
    f'too large for Pillow ({count}over its decompression-bomb limit of {limit:,} = 2 x '
    f'PIL.Image.MAX_IMAGE_PIXELS): shrink the image, or raise the limit with '
    f'{MAX_PIXELS_VARIABLE}=PIXELS (or none) in the environment'
  )


def image_size(jpeg: bytes) -> tuple[int, int]:
  """(height, width) of an encoded image, read from its header only."""
  try:
    h, w, _, _ = simplejpeg.decode_jpeg_header(jpeg)
    return h, w
  except ValueError:  # Not a JPEG libjpeg-turbo can parse (e.g. a PNG).
    w, h = _pillow_open(jpeg).size
    return h, w


def dct_factor(h: int, w: int, min_shorter_side: int | None) -> int:
  """The largest 1/f DCT scale (f in 1, 2, 4, 8) keeping shorter side >= min."""
  if not min_shorter_side:
    return 1
  shorter = min(h, w)
  for f in DCT_FACTORS:
    if -(-shorter // f) >= min_shorter_side:
      return f
  return 1


def _decode_pillow(data: bytes, min_shorter_side: int | None) -> np.ndarray:
  image = _pillow_open(data)
  if image.format == 'JPEG' and min_shorter_side:
    w, h = image.size
    f = dct_factor(h, w, min_shorter_side)
    if f > 1:  # draft() picks the largest scale keeping both sides >= these.
      image.draft('RGB', (w // f, h // f))
  return _to_rgb(image)


def _to_rgb(image: PIL.Image.Image) -> np.ndarray:
  """uint8 RGB of a Pillow image of any mode."""
  if image.mode in _WIDE_GREY_MODES:
    # convert('RGB') clips 16-bit values at 255 (almost white): scale instead,
    # rounding value * 255 / 65535.
    wide = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
    grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  # convert() turns greyscale, CMYK, palette and RGBA into 3-channel RGB.
  return np.asarray(image.convert('RGB'))


def _decode_simplejpeg(data: bytes, min_shorter_side: int | None) -> np.ndarray:
  try:
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    f = dct_factor(h, w, min_shorter_side)
    # Asking for exactly ceil(side / f) selects the 1/f scale, never M/8.
    # strict=False: decode what is there despite recoverable stream errors
    # (e.g. extraneous bytes), as TF and Pillow do.
    return simplejpeg.decode_jpeg(
      data, 'RGB', min_height=-(-h // f), min_width=-(-w // f), strict=False
    )
  except ValueError:
    return _decode_pillow(data, min_shorter_side)


_CV2_REDUCED = {
  1: cv2.IMREAD_COLOR_RGB,
  2: cv2.IMREAD_REDUCED_COLOR_2,
  4: cv2.IMREAD_REDUCED_COLOR_4,
  8: cv2.IMREAD_REDUCED_COLOR_8,
}


def _decode_opencv(data: bytes, min_shorter_side: int | None) -> np.ndarray:
  h, w = image_size(data)
  f = dct_factor(h, w, min_shorter_side)
  # The REDUCED flags include IMREAD_COLOR (BGR): swap it for the RGB bit.
  mode = (_CV2_REDUCED[f] & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB
  # Stored orientation, like the other decoders (and TF): ignore EXIF.
  image = cv2.imdecode(np.frombuffer(data, np.uint8), mode | cv2.IMREAD_IGNORE_ORIENTATION)
  if image is None:
    return _decode_pillow(data, min_shorter_side)
  return image


# The candidates `input_benchmark --decoders` compares (docs/speed.md): all
# three use libjpeg-turbo, simplejpeg with the least per-call overhead, so it
# is the default. Its M/8 scales (3/4, 5/8, ...) decode slower than full
# size: only 1/2^k are used.
DECODERS = {'simplejpeg': _decode_simplejpeg, 'opencv': _decode_opencv, 'pillow': _decode_pillow}
DECODER = 'simplejpeg'


def decode(jpeg: bytes, min_shorter_side: int | None = None) -> np.ndarray:
  """Decodes an image to RGB, at reduced DCT scale where that is enough.

  Args:
    jpeg: encoded image (JPEG; PNG, CMYK and other oddities via Pillow).
    min_shorter_side: the decoded shorter side must be at least this; the
      JPEG is decoded at the smallest 1/2^k scale (k <= 3) that keeps it.
      None: full size.

  Returns:
    uint8 (H, W, 3) RGB array; greyscale images are expanded to 3 channels.
  """
  return DECODERS[DECODER](jpeg, min_shorter_side)


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
  """(height, width) after resizing the shorter side of h x w to `size`."""
  if h <= w:
    return size, max(1, round(w * size / h))
  return max(1, round(h * size / w)), size


def _interpolation(shrink: float) -> int:
  """Bilinear, or area averaging (antialiased) when shrinking 2x or more.

  Below 2x, bilinear aliases little, and OpenCV's area averaging at
  fractional factors costs several times more (docs/speed.md). Decoding at
  reduced DCT scale first (itself an antialiased downscale) leaves < 2x.
  """
  return cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR


def resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Resizes to (h, w) with `_interpolation`."""
  h, w = hw
  if image.shape[:2] == (h, w):
    return image
  shrink = max(image.shape[0] / h, image.shape[1] / w)
  return cv2.resize(image, (w, h), interpolation=_interpolation(shrink))


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes so that the shorter side is `size`, keeping the aspect ratio.

  Args:
    image: uint8 (H, W, 3).
    size: the new shorter side; the longer side becomes round(L * size / S).

  Returns:
    The resized uint8 image (bilinear; area average when shrinking >= 2x).
  """
  return resize(image, resized_shape(*image.shape[:2], size))


def decode_resized(jpeg: bytes, size: int) -> np.ndarray:
  """An encoded image at shorter side `size`: what center and 10-crop views are cut from.

  Decoded at the reduced DCT scale that keeps the shorter side >= `size`,
  then resized to the shape of the full-size image resized: DCT scaling
  rounds the sides, which must not change the view's aspect.

  Args:
    jpeg: encoded image (JPEG; other formats via Pillow).
    size: the shorter side.

  Returns:
    uint8 (H, W, 3).
  """
  h, w = image_size(jpeg)
  return resize(decode(jpeg, min_shorter_side=size), resized_shape(h, w, size))


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
  ih, iw = image.shape[:2]
  # Pixels of `image` per pixel of the resized image.
  sy, sx = ih / crop.resized_hw[0], iw / crop.resized_hw[1]
  n = crop.size
  y0, x0 = round(crop.top * sy), round(crop.left * sx)
  y1 = min(ih, max(y0 + 1, round((crop.top + n) * sy)))
  x1 = min(iw, max(x0 + 1, round((crop.left + n) * sx)))
  out = cv2.resize(image[y0:y1, x0:x1], (n, n), interpolation=_interpolation(max(sy, sx)))
  return cv2.flip(out, 1) if crop.flip else out


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
  ih, iw = image.shape[:2]
  sy, sx = ih / crop.image_hw[0], iw / crop.image_hw[1]
  y0, x0 = round(crop.top * sy), round(crop.left * sx)
  y1 = min(ih, max(y0 + 1, round((crop.top + crop.height) * sy)))
  x1 = min(iw, max(x0 + 1, round((crop.left + crop.width) * sx)))
  n = crop.size
  shrink = max(y1 - y0, x1 - x0) / n
  out = cv2.resize(image[y0:y1, x0:x1], (n, n), interpolation=_interpolation(shrink))
  return cv2.flip(out, 1) if crop.flip else out


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


def center_crop(resized: np.ndarray, crop_size: int) -> np.ndarray:
  h, w = resized.shape[:2]
  top, left = (h - crop_size) // 2, (w - crop_size) // 2
  return resized[top : top + crop_size, left : left + crop_size]


def ten_crops(resized: np.ndarray, crop_size: int) -> np.ndarray:
  h, w = resized.shape[:2]
  c = crop_size
  if min(h, w) < c:
    raise ValueError(f'image {h}x{w} is smaller than the crop {c}')
  out = np.empty((10, c, c, 3), np.uint8)
  for i, (top, left) in enumerate(
    [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2)]
  ):
    out[i] = resized[top : top + c, left : left + c]
  out[5:] = out[:5, :, ::-1]
  return out


def center_view(
  image: np.ndarray, resize_size: int = EVAL_RESIZE, crop_size: int = CROP_SIZE
) -> np.ndarray:
  """The single-crop test view: shorter side to 256, central 224 crop.

  Args:
    image: uint8 (H, W, 3).
    resize_size: shorter side before cropping.
    crop_size: output side; the offset is (side - crop_size) // 2.

  Returns:
    uint8 (crop_size, crop_size, 3).
  """
  return center_crop(resize_shorter(image, resize_size), crop_size)


def ten_crop_views(
  image: np.ndarray, resize_size: int = EVAL_RESIZE, crop_size: int = CROP_SIZE
) -> np.ndarray:
  """The standard 10 test crops at shorter side 256.

  The four corners are those of the WHOLE resized image (fb.resnet.torch's
  TenCrop, and our reading of KaimingHe's "10 224x224 crops from resized
  image with shorter side=256"); AlexNet instead took the corners of the
  central 256x256 square. On a 4:3 image the two differ only along the longer
  side.

  Args:
    image: uint8 (H, W, 3).
    resize_size: shorter side before cropping.
    crop_size: crop side.

  Returns:
    uint8 (10, crop_size, crop_size, 3): top-left, top-right, bottom-left,
    bottom-right, centre, then the horizontal flips of those five in the same
    order.
  """
  return ten_crops(resize_shorter(image, resize_size), crop_size)


def canvas_shape(h: int, w: int, scale: int) -> tuple[int, int]:
  """The padded canvas (Hc, Wc) for an h x w image resized to shorter `scale`.

  The shorter side is rounded up to a multiple of 32; the longer one to the
  next of scale * (1, 4/3, 3/2, 2, 3, 4, 8, 16, ...), then to a multiple of
  32, so a whole dataset falls into a few shapes per scale (each compiled
  once) and the canvas always holds the whole resized image.

  Args:
    h, w: original image size.
    scale: the resized shorter side.

  Returns:
    (Hc, Wc), oriented like the image.
  """
  rh, rw = resized_shape(h, w, scale)
  longer = max(rh, rw)
  ratio = next((r for r in CANVAS_ASPECTS if scale * r >= longer), None)
  if ratio is None:
    ratio = CANVAS_ASPECTS[-1]
    while scale * ratio < longer:
      ratio *= 2
  m = CANVAS_MULTIPLE
  short_c = -(-scale // m) * m
  long_c = max(short_c, math.ceil(scale * ratio / m) * m)
  return (short_c, long_c) if h <= w else (long_c, short_c)


def multi_scale_views(
  image: np.ndarray,
  scale: int,
  canvas_hw: tuple[int, int],
  resized_hw: tuple[int, int] | None = None,
):
  """The whole image at one test scale, and its mirror, on a zero canvas.

  Args:
    image: uint8 (H, W, 3).
    scale: the resized shorter side.
    canvas_hw: (Hc, Wc), e.g. from `canvas_shape`.
    resized_hw: the resized size; default `resized_shape(H, W, scale)`. Pass
      the size computed from the original image when `image` was decoded at
      reduced DCT scale, so it matches the `canvas_shape` bucket exactly.

  Returns:
    (views, (h, w)): views uint8 (2, Hc, Wc, 3), the resized image and its
    horizontal flip, both top-left in the canvas over the same valid h x w
    rectangle (the flip is of the valid region only); zeros elsewhere.
  """
  h, w = resized_hw or resized_shape(*image.shape[:2], scale)
  hc, wc = canvas_hw
  if h > hc or w > wc:
    raise ValueError(f'resized image {h}x{w} does not fit canvas {hc}x{wc}')
  resized = resize(image, (h, w))
  views = np.zeros((2, hc, wc, 3), np.uint8)
  views[0, :h, :w] = resized
  views[1, :h, :w] = resized[:, ::-1]
  return views, (h, w)
