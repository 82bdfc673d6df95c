"""TrivialAugment (Mueller & Hutter 2021) on the host, as torchvision's `TrivialAugmentWide`.

Each image gets one operation drawn uniformly from the 14 below and, for the
operations that take one, one of NUM_BINS magnitudes drawn uniformly (negated
with probability 1/2 for the signed ones), in torchvision's order of draws.
The operations run in Pillow exactly as torchvision's PIL path runs them
(`torchvision.transforms.autoaugment.TrivialAugmentWide._augmentation_space`
and `_apply_op`, `torchvision.transforms.functional.affine`/`rotate`):
nearest-neighbour resampling, pixels from outside the image filled with 0.

The operations, and their magnitude m at bin k of NUM_BINS:
- Identity: nothing.
- ShearX, ShearY: m = linspace(0, 0.99)[k], signed; a shear by atan(m) about
  the top-left corner (ShearX: x' = x - m y).
- TranslateX, TranslateY: m = linspace(0, 32)[k], signed; a shift by int(m)
  pixels.
- Rotate: m = linspace(0, 135)[k] degrees, signed; counter-clockwise about
  the centre.
- Brightness, Color (saturation), Contrast, Sharpness: m = linspace(0,
  0.99)[k], signed; `ImageEnhance` with factor 1 + m.
- Posterize: 8 - round(k / 5) bits kept of each channel.
- Solarize: m = linspace(255, 0)[k]; the pixels >= m inverted.
- AutoContrast: each channel stretched to 0..255.
- Equalize: each channel's histogram equalised.

The translation is absolute, 0..32 pixels whatever the image size, as in
torchvision (whose table was made for 224-pixel ImageNet crops): on a
32x32 CIFAR image the largest shifts leave little or nothing of it. That is
kept for fidelity to torchvision's `TrivialAugmentWide`.
"""

import math

import numpy as np
import PIL.Image
from PIL import ImageEnhance, ImageOps

NUM_BINS = 31  # torchvision's num_magnitude_bins.
_FILL = (0, 0, 0)
_NEAREST = PIL.Image.Resampling.NEAREST


def _torch_linspace(start: float, end: float) -> np.ndarray:
  """`torch.linspace(start, end, NUM_BINS)` to the bit (float32).

  torch's CPU kernel computes start + step * k for the first half and
  end - step * (n - 1 - k) for the rest with a fused multiply-add in float32:
  exact in float64, then rounded once. The bits matter: its translate bin 15
  is 15.999999, which int() makes 15 pixels, not 16.
  """
  start32, end32 = np.float32(start), np.float32(end)
  step = np.float64((end32 - start32) / np.float32(NUM_BINS - 1))
  k = np.arange(NUM_BINS, dtype=np.float64)
  first = np.float64(start32) + step * k
  second = np.float64(end32) - step * (NUM_BINS - 1 - k)
  return np.where(k < NUM_BINS // 2, first, second).astype(np.float32)


# Operation -> (its NUM_BINS magnitudes or None, signed), in torchvision's
# order (the drawn index picks from it).
SPACE = {
  'Identity': (None, False),
  'ShearX': (_torch_linspace(0.0, 0.99), True),
  'ShearY': (_torch_linspace(0.0, 0.99), True),
  'TranslateX': (_torch_linspace(0.0, 32.0), True),
  'TranslateY': (_torch_linspace(0.0, 32.0), True),
  'Rotate': (_torch_linspace(0.0, 135.0), True),
  'Brightness': (_torch_linspace(0.0, 0.99), True),
  'Color': (_torch_linspace(0.0, 0.99), True),
  'Contrast': (_torch_linspace(0.0, 0.99), True),
  'Sharpness': (_torch_linspace(0.0, 0.99), True),
  # No bin falls on a .5, so rounding half to even (torch) or away does not matter.
  'Posterize': (8 - np.round(np.arange(NUM_BINS) / ((NUM_BINS - 1) / 6)).astype(np.int32), False),
  'Solarize': (_torch_linspace(255.0, 0.0), False),
  'AutoContrast': (None, False),
  'Equalize': (None, False),
}
OPS = tuple(SPACE)


def trivial_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One TrivialAugmentWide draw applied to one image.

  Args:
    image: uint8 (H, W, 3) RGB.
    rng: the example's generator: draws the operation, then (if it takes
      one) the magnitude bin, then (if signed) the sign.

  Returns:
    uint8 (H, W, 3).
  """
  name = OPS[int(rng.integers(len(OPS)))]
  magnitudes, signed = SPACE[name]
  magnitude = 0.0
  if magnitudes is not None:
    magnitude = float(magnitudes[int(rng.integers(NUM_BINS))])
    if signed and rng.integers(2):
      magnitude = -magnitude
  return apply_op(image, name, magnitude)


def apply_op(image: np.ndarray, name: str, magnitude: float) -> np.ndarray:
  """Applies operation `name` (one of OPS) of signed `magnitude` to an image.

  Args:
    image: uint8 (H, W, 3) RGB.
    name: the operation.
    magnitude: its magnitude, as drawn from SPACE (ignored by the operations
      that take none).

  Returns:
    uint8 (H, W, 3): a new array (the input itself for Identity).
  """
  if name == 'Identity':
    return image
  return np.array(_PIL_OPS[name](PIL.Image.fromarray(image), magnitude))


def _affine(image: PIL.Image.Image, matrix) -> PIL.Image.Image:
  """Pillow's inverse affine map (output pixel -> input pixel), as torchvision's
  PIL `affine` calls it."""
  return image.transform(image.size, PIL.Image.Transform.AFFINE, matrix, _NEAREST, fillcolor=_FILL)


def _shear_x(image, m):
  # torchvision passes shear=degrees(atan(m)) and turns it back to radians;
  # about center [0, 0] its inverse matrix is then (1, tan(s), 0, 0, 1, 0).
  s = math.radians(math.degrees(math.atan(m)))
  return _affine(image, (1.0, math.tan(s), 0.0, 0.0, 1.0, 0.0))


def _shear_y(image, m):
  s = math.radians(math.degrees(math.atan(m)))
  return _affine(image, (1.0, 0.0, 0.0, math.sin(s) / math.cos(s), 1.0, 0.0))


def _translate(image, dx: int, dy: int):
  # About the image centre; its offsets cancel, leaving the shift.
  return _affine(image, (1.0, 0.0, -float(dx), 0.0, 1.0, -float(dy)))


_PIL_OPS = {
  'ShearX': _shear_x,
  'ShearY': _shear_y,
  'TranslateX': lambda image, m: _translate(image, int(m), 0),
  'TranslateY': lambda image, m: _translate(image, 0, int(m)),
  'Rotate': lambda image, m: image.rotate(m, _NEAREST, fillcolor=_FILL),
  'Brightness': lambda image, m: ImageEnhance.Brightness(image).enhance(1.0 + m),
  'Color': lambda image, m: ImageEnhance.Color(image).enhance(1.0 + m),
  'Contrast': lambda image, m: ImageEnhance.Contrast(image).enhance(1.0 + m),
  'Sharpness': lambda image, m: ImageEnhance.Sharpness(image).enhance(1.0 + m),
  'Posterize': lambda image, m: ImageOps.posterize(image, int(m)),
  'Solarize': lambda image, m: ImageOps.solarize(image, m),
  'AutoContrast': lambda image, m: ImageOps.autocontrast(image),
  'Equalize': lambda image, m: ImageOps.equalize(image),
}
