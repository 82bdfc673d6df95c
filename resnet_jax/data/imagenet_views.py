"""ImageNet images on the host: decoding, resizing and the test views, in numpy.

Decoding uses simplejpeg at a reduced DCT scale where a view needs fewer
pixels (Pillow for what it cannot read); resizing and cropping use OpenCV.
The test views: center and 10-crop, and the whole-image views of the
multi-scale test on canvas buckets (the training views, cut from the same
decoding, are `imagenet_train_views`'). Knows nothing of Grain or the devices.
"""

import io
import math
import os
import re
import sys

import cv2
import numpy as np
import PIL.Image
import simplejpeg

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


def interpolation(shrink: float) -> int:
  """Bilinear, or area averaging (antialiased) when shrinking 2x or more.

  Below 2x, bilinear aliases little, and OpenCV's area averaging at
  fractional factors costs several times more (docs/speed.md). Decoding at
  reduced DCT scale first (itself an antialiased downscale) leaves < 2x.
  """
  return cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR


def resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Resizes to (h, w) with `interpolation`."""
  h, w = hw
  if image.shape[:2] == (h, w):
    return image
  shrink = max(image.shape[0] / h, image.shape[1] / w)
  return cv2.resize(image, (w, h), interpolation=interpolation(shrink))


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
