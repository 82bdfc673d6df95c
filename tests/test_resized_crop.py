"""Tests of the Inception-style training crop (`imagenet_train_views.sample_resized_crop`
and its rendering), as torchvision's `RandomResizedCrop` and a flip, and of
its place in the ImageNet family's training pipeline.

Synthetic images: linear colour ramps (red encodes x, green encodes y), whose
rendered crops reveal the box they were cut from, and random textures, JPEG
encoded where the reduced-size decoding is tested.
"""

import io
import os

import numpy as np
import PIL.Image
import pytest

from resnet_jax import config_lib, data
from resnet_jax.data import imagenet, imagenet_train_views, imagenet_views

from helpers import write_bytes

AREA, ASPECT = (0.08, 1.0), (3 / 4, 4 / 3)


def _ramp(h, w):
  """RGB image with red = x and green = y, each scaled to 0..255."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  r, g = x * 255 / (w - 1), y * 255 / (h - 1)
  return np.stack([r, g, np.full_like(r, 128)], -1).round().astype(np.uint8)


def _texture(h, w, seed=0, cell=16):
  """A smooth random texture of `cell`-pixel blobs (JPEG keeps it nearly intact)."""
  small = np.random.default_rng(seed).integers(0, 256, (h // cell + 1, w // cell + 1, 3), np.uint8)
  return np.asarray(PIL.Image.fromarray(small).resize((w, h), PIL.Image.Resampling.BICUBIC))


def _jpeg(image):
  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, 'JPEG', quality=95)
  return out.getvalue()


def _is_center_fallback(crop, aspect):
  h, w = crop.image_hw
  width, height = w, h
  if w / h < aspect[0]:
    height = round(w / aspect[0])
  elif w / h > aspect[1]:
    width = round(h * aspect[1])
  return (crop.top, crop.left, crop.height, crop.width) == (
    (h - height) // 2,
    (w - width) // 2,
    height,
    width,
  )


@pytest.mark.parametrize('area,aspect', [(AREA, ASPECT), ((0.25, 0.5), (0.5, 2.0))])
def test_boxes_lie_in_the_image_with_areas_and_aspects_in_range(area, aspect):
  rng = np.random.default_rng(0)
  fractions, aspects, flips = [], [], []
  for _ in range(3000):
    h, w = int(rng.integers(60, 600)), int(rng.integers(60, 600))
    crop = imagenet_train_views.sample_resized_crop(h, w, rng, 224, area, aspect)
    assert crop.image_hw == (h, w) and crop.size == 224
    assert 0 <= crop.top and crop.top + crop.height <= h
    assert 0 <= crop.left and crop.left + crop.width <= w
    flips.append(crop.flip)
    if _is_center_fallback(crop, aspect):
      continue
    # Sides rounded from an area fraction and an aspect (w / h) in range.
    bh, bw = crop.height, crop.width
    assert (bh - 0.5) * (bw - 0.5) <= area[1] * h * w
    assert (bh + 0.5) * (bw + 0.5) >= area[0] * h * w
    assert (bw - 0.5) / (bh + 0.5) <= aspect[1] and (bw + 0.5) / (bh - 0.5) >= aspect[0]
    fractions.append(bh * bw / (h * w))
    aspects.append(bw / bh)
  assert len(fractions) > 0.9 * 3000  # The fallback is rare for these ranges.
  assert min(fractions) < area[0] + 0.02 and max(fractions) > area[1] - 0.05
  assert min(aspects) < aspect[0] * 1.05 and max(aspects) > aspect[1] * 0.95
  assert 0.45 < np.mean(flips) < 0.55


@pytest.mark.parametrize(
  'aspect,expected',
  [
    ((3.0, 4.0), (33, 0, 33, 100)),  # Too tall: full width, height 100 / 3.
    ((0.2, 0.25), (0, 37, 100, 25)),  # Too wide: full height, width 100 * 0.25.
  ],
)
def test_a_box_that_never_fits_falls_back_to_the_clamped_centre(aspect, expected):
  # Nearly all of a square image at these aspects never fits in 10 tries:
  # torchvision then takes the centred box, its aspect clamped to the range.
  for seed in range(20):
    crop = imagenet_train_views.sample_resized_crop(
      100, 100, np.random.default_rng(seed), 32, (0.9, 1.0), aspect
    )
    assert (crop.top, crop.left, crop.height, crop.width) == expected


def test_render_cuts_the_box_and_flips():
  image = _ramp(300, 400)
  crop = imagenet_train_views.ResizedCrop((300, 400), 50, 120, 150, 200, 64, False)
  out = imagenet_train_views.render_resized_crop(image, crop)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  # Red is x * 255 / 399: the crop's columns run from x = 120 to 320.
  x = out[:, :, 0].mean(0) * 399 / 255
  y = out[:, :, 1].mean(1) * 299 / 255
  assert abs(x[0] - 120) < 3 and abs(x[-1] - 319) < 3
  assert abs(y[0] - 50) < 3 and abs(y[-1] - 199) < 3
  flipped = imagenet_train_views.ResizedCrop(**{**vars(crop), 'flip': True})
  np.testing.assert_array_equal(
    imagenet_train_views.render_resized_crop(image, flipped), out[:, ::-1]
  )


def test_reduced_size_decoding_renders_nearly_the_full_size_crop(monkeypatch):
  # Boxes are rounded to whole pixels of the reduced image (as the paper's
  # view does): a shift of up to f/2 pixels, whose error grows with the
  # image's gradients; 64-pixel blobs keep it small.
  jpeg = _jpeg(_texture(1100, 1400, cell=64))
  decoded = []
  decode = imagenet_views.decode

  def recording_decode(data, min_shorter_side=None):
    image = decode(data, min_shorter_side)
    decoded.append(image.shape[:2])
    return image

  factors = set()
  for seed in range(12):
    crop = imagenet_train_views.sample_resized_crop(1100, 1400, np.random.default_rng(seed), 224)
    monkeypatch.setattr(imagenet_train_views, 'decode', recording_decode)
    reduced = imagenet_train_views.resized_crop_example(jpeg, np.random.default_rng(seed), 224)
    monkeypatch.setattr(imagenet_train_views, 'decode', decode)
    full = imagenet_train_views.resized_crop_view(decode(jpeg), np.random.default_rng(seed), 224)
    assert reduced.shape == (224, 224, 3) and reduced.dtype == np.uint8
    assert np.abs(reduced.astype(int) - full).mean() < 3.5, seed
    factor = round(1100 / decoded[-1][0])
    factors.add(factor)
    # Decoded as small as allowed: the box still spans >= 224 pixels, but
    # not at the next smaller scale.
    assert min(crop.height, crop.width) / factor >= 224
    assert factor == 8 or min(crop.height, crop.width) / (2 * factor) < 224
  assert factors & {2, 4}, factors  # Some draws decode at reduced size.


def test_train_dataset_random_resized_crops():
  source = [{'image': _jpeg(_texture(48, 64, i)), 'label': i} for i in range(10)]
  kwargs = dict(local_batch_size=4, seed=7, crop_size=32)
  batches = iter(imagenet.train_dataset(source, train_crop='random_resized', **kwargs))
  again = iter(imagenet.train_dataset(source, train_crop='random_resized', **kwargs))
  plain = iter(imagenet.train_dataset(source, scale_range=(36, 60), **kwargs))
  for _ in range(3):
    batch, other, paper = next(batches), next(again), next(plain)
    assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.uint8
    np.testing.assert_array_equal(batch['image'], other['image'])
    np.testing.assert_array_equal(batch['label'], paper['label'])  # Same order.
    assert not np.array_equal(batch['image'], paper['image'])
  with pytest.raises(ValueError, match='train_crop'):
    imagenet.train_dataset(source, train_crop='inception', **kwargs)


def test_the_config_chooses_the_crop_and_its_ranges(tmp_path):
  for label in range(2):
    for i in range(3):
      path = os.path.join(tmp_path, 'train', f'class{label}', f'{i}.jpg')
      write_bytes(path, _jpeg(_texture(60, 80, 3 * label + i)))
  config = config_lib.imagenette('resnet18')
  config.input.update(dataset='folder', data_dir=str(tmp_path), num_workers=0)
  config.input.update(holdout_validation=False, image_size=32, scale_range=(36, 48))
  config.input.update(train_crop='random_resized', crop_area_range=(0.3, 0.6))
  config.input.crop_aspect_range = (0.5, 0.9)
  dataset = data.create(config)
  got = next(iter(dataset.train_batches(4, 5, 0, 1)))
  source = dataset._source('train')
  expected = imagenet.train_dataset(
    source,
    local_batch_size=4,
    seed=5,
    crop_size=32,
    train_crop='random_resized',
    area_range=(0.3, 0.6),
    aspect_range=(0.5, 0.9),
  )
  expected = next(iter(expected))
  np.testing.assert_array_equal(got['image'], expected['image'])
  np.testing.assert_array_equal(got['label'], expected['label'])
  default = imagenet.train_dataset(
    source, local_batch_size=4, seed=5, crop_size=32, scale_range=(36, 48)
  )
  assert not np.array_equal(got['image'], next(iter(default))['image'])
