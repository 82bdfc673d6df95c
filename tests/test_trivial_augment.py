"""Tests of TrivialAugment (`data.trivial_augment`) and of its place in both
families' training pipelines.

Each operation is checked against a result computed by hand on small
synthetic images; the magnitude tables against torchvision's formulas; the
draws for uniformity and determinism. The pipeline tests check that the
default path draws exactly what it drew before the option existed (against a
recomputation that does not go through the option's code), that the option
changes the images and nothing else, and that its draws are the same for any
process count and after a resume.
"""

import functools
import io
import json

import grain
import numpy as np
import PIL.Image
import pytest

from resnet_jax import config_lib, data
from resnet_jax.data import cifar, core, imagenet, imagenet_train_views
from resnet_jax.data import trivial_augment as ta

from helpers import tiny_splits


def _image(h=12, w=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _sheared(image, m, axis):
  """Pillow's nearest-neighbour inverse map of a shear about the top-left
  corner, by hand: output pixel (x, y) reads input column (or row)
  floor(x + 0.5 + m (y + 0.5)) (pixel centres), 0 outside."""
  h, w = image.shape[:2]
  out = np.zeros_like(image)
  for y in range(h):
    for x in range(w):
      if axis == 'x':
        src = int(np.floor(x + 0.5 + m * (y + 0.5)))
        if 0 <= src < w:
          out[y, x] = image[y, src]
      else:
        src = int(np.floor(y + 0.5 + m * (x + 0.5)))
        if 0 <= src < h:
          out[y, x] = image[src, x]
  return out


def test_identity_is_the_image():
  image = _image()
  np.testing.assert_array_equal(ta.apply_op(image, 'Identity', 0.0), image)


@pytest.mark.parametrize('k', [1, 3, -2, -5])
def test_translate_moves_pixels_by_whole_pixels_and_fills_zero(k):
  image = _image()
  out = ta.apply_op(image, 'TranslateX', float(k))
  expected = np.zeros_like(image)
  if k > 0:
    expected[:, k:] = image[:, :-k]
  else:
    expected[:, :k] = image[:, -k:]
  np.testing.assert_array_equal(out, expected)
  out = ta.apply_op(image, 'TranslateY', float(k))
  expected = np.zeros_like(image)
  if k > 0:
    expected[k:] = image[:-k]
  else:
    expected[:k] = image[-k:]
  np.testing.assert_array_equal(out, expected)


def test_translate_truncates_the_magnitude_toward_zero():
  # torchvision's int(magnitude): 2.9 pixels is 2, -2.9 is -2.
  image = _image()
  for m, k in ((2.9, 2.0), (-2.9, -2.0), (0.5, 0.0)):
    np.testing.assert_array_equal(
      ta.apply_op(image, 'TranslateX', m), ta.apply_op(image, 'TranslateX', k)
    )
  np.testing.assert_array_equal(ta.apply_op(image, 'TranslateY', 0.9), image)


def test_the_largest_translation_wipes_a_cifar_sized_image():
  # torchvision's translations are absolute (up to 32 pixels): kept as such.
  image = _image(32, 32) | 1  # No zero pixel to begin with.
  largest = float(ta.SPACE['TranslateX'][0][-1])
  assert largest == 32.0
  assert not ta.apply_op(image, 'TranslateX', largest).any()
  assert not ta.apply_op(image, 'TranslateY', -largest).any()


@pytest.mark.parametrize('m', [0.5, -0.5, 0.3])
def test_shear_is_about_the_top_left_corner(m):
  image = _image()
  np.testing.assert_array_equal(ta.apply_op(image, 'ShearX', m), _sheared(image, m, 'x'))
  np.testing.assert_array_equal(ta.apply_op(image, 'ShearY', m), _sheared(image, m, 'y'))
  # Row 0 (ShearX) barely moves: the corner is the fixed point.
  np.testing.assert_array_equal(ta.apply_op(image, 'ShearX', m)[0, 2:-2], image[0, 2:-2])


def test_rotate_is_counter_clockwise_about_the_centre_with_zero_fill():
  image = _image(9, 9)
  np.testing.assert_array_equal(ta.apply_op(image, 'Rotate', 0.0), image)
  np.testing.assert_array_equal(ta.apply_op(image, 'Rotate', 90.0), np.rot90(image))
  np.testing.assert_array_equal(ta.apply_op(image, 'Rotate', -90.0), np.rot90(image, -1))
  np.testing.assert_array_equal(ta.apply_op(image, 'Rotate', 180.0), image[::-1, ::-1])
  white = np.full((21, 21, 3), 255, np.uint8)
  out = ta.apply_op(white, 'Rotate', 45.0)
  assert not out[0, 0].any() and not out[-1, -1].any()  # Corners from outside: 0.
  assert (out[8:13, 8:13] == 255).all()


@pytest.mark.parametrize('m', [0.5, -0.5, 0.99, -0.99])
def test_brightness_scales_pixels_by_one_plus_m(m):
  image = _image()
  out = ta.apply_op(image, 'Brightness', m).astype(float)
  np.testing.assert_allclose(out, np.clip(image * (1 + m), 0, 255), atol=1)


def test_contrast_scales_the_distance_from_the_mean_grey():
  image = np.zeros((8, 8, 3), np.uint8)
  image[:, :4], image[:, 4:] = 100, 200  # Mean grey 150.
  for m, (low, high) in ((0.5, (75, 225)), (-0.5, (125, 175))):
    out = ta.apply_op(image, 'Contrast', m)
    assert (out[:, :4] == low).all() and (out[:, 4:] == high).all(), m
  grey = np.full((8, 8, 3), 90, np.uint8)
  np.testing.assert_array_equal(ta.apply_op(grey, 'Contrast', 0.9), grey)


def test_color_moves_toward_or_away_from_grey():
  grey = np.full((6, 6, 3), 77, np.uint8)
  for m in (0.9, -0.9):
    np.testing.assert_array_equal(ta.apply_op(grey, 'Color', m), grey)
  image = _image()
  spread = lambda x: np.ptp(x.astype(int), axis=-1).mean()  # Channel spread.
  assert spread(ta.apply_op(image, 'Color', -0.99)) < 0.05 * spread(image) + 1
  assert spread(ta.apply_op(image, 'Color', 0.99)) > 1.3 * spread(image)


def test_sharpness_blends_with_the_smoothed_image():
  # Pillow's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 on one pixel of 130:
  # 50 at the pixel, 10 around it; the result is smooth + f (image - smooth).
  image = np.zeros((7, 7, 3), np.uint8)
  image[3, 3] = 130
  for m in (-0.99, 0.99):
    f = 1 + m
    out = ta.apply_op(image, 'Sharpness', m).astype(float)
    assert abs(out[3, 3, 0] - np.clip(50 + f * 80, 0, 255)) <= 1
    assert abs(out[3, 2, 0] - np.clip(10 - f * 10, 0, 255)) <= 1
    assert abs(out[2, 2, 0] - np.clip(10 - f * 10, 0, 255)) <= 1
    assert not out[0].any()  # The border is kept.


@pytest.mark.parametrize('bits', [8, 7, 5, 2])
def test_posterize_keeps_the_top_bits(bits):
  image = _image()
  mask = (0xFF << (8 - bits)) & 0xFF
  np.testing.assert_array_equal(ta.apply_op(image, 'Posterize', float(bits)), image & mask)


@pytest.mark.parametrize('threshold', [255.0, 246.5, 128.0, 0.0])
def test_solarize_inverts_the_pixels_at_or_above_the_threshold(threshold):
  image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  expected = np.where(image >= threshold, 255 - image, image)
  np.testing.assert_array_equal(ta.apply_op(image, 'Solarize', threshold), expected)


def test_autocontrast_stretches_each_channel():
  image = np.zeros((4, 4, 3), np.uint8)
  image[:2, :, 0], image[2:, :, 0] = 50, 100
  image[..., 1] = np.arange(16).reshape(4, 4) * 10 + 20
  image[..., 2] = 33  # A flat channel stays as it is.
  out = ta.apply_op(image, 'AutoContrast', 0.0).astype(float)
  for c in (0, 1):  # Linear from (lowest, highest) to (0, 255), to Pillow's rounding.
    channel = image[..., c].astype(float)
    low, high = channel.min(), channel.max()
    np.testing.assert_allclose(out[..., c], (channel - low) * 255 / (high - low), atol=1)
  assert out[..., 1].min() == 0 and out[..., 1].max() >= 254
  assert (np.diff(out[..., 1].ravel()) > 0).all()  # Order kept.
  assert (out[..., 2] == 33).all()


def test_equalize_spreads_equally_common_values_evenly():
  values = np.repeat(np.array([10, 20, 30, 40], np.uint8), 1024)
  image = values.reshape(64, 64, 1).repeat(3, -1)
  out = ta.apply_op(image, 'Equalize', 0.0)
  levels = np.unique(out)
  assert len(levels) == 4 and levels[0] == 0 and levels[-1] == 255
  np.testing.assert_allclose(np.diff(levels.astype(float)), 85, atol=1)
  np.testing.assert_array_equal(out[values.reshape(64, 64) == 20][:, 0], levels[1])


def test_magnitude_tables_are_torchvisions():
  space = ta.SPACE
  assert ta.OPS == (
    'Identity', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Brightness',
    'Color', 'Contrast', 'Sharpness', 'Posterize', 'Solarize', 'AutoContrast', 'Equalize',
  )  # fmt: skip
  signed = {name for name, (_, s) in space.items() if s}
  assert signed == set(ta.OPS[1:10])
  assert all(space[name][0] is None for name in ('Identity', 'AutoContrast', 'Equalize'))
  k = np.arange(31)
  for name, end in (('ShearX', 0.99), ('TranslateY', 32.0), ('Rotate', 135.0), ('Color', 0.99)):
    np.testing.assert_allclose(space[name][0], end * k / 30, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(space['Solarize'][0], 255 - 8.5 * k, atol=1e-5)
  assert space['ShearY'][0][30] == np.float32(0.99) and space['Brightness'][0][15] == 0.495
  assert space['Rotate'][0][20] == 90.0 and space['Rotate'][0][10] == 45.0
  assert space['Solarize'][0][0] == 255.0 and space['Solarize'][0][30] == 0.0
  assert space['Solarize'][0][10] == 170.0
  # torch.linspace's float32 bits: bin 15 is 15.999999, so int() gives 15.
  pixels = [int(float(m)) for m in space['TranslateX'][0]]
  assert pixels[14:17] == [14, 15, 17] and pixels[30] == 32
  posterize = space['Posterize'][0]
  assert list(posterize[[0, 2, 3, 7, 8, 27, 28, 30]]) == [8, 8, 7, 7, 6, 3, 2, 2]
  np.testing.assert_array_equal(posterize, 8 - np.round(k / 5))


def test_ops_bins_and_signs_are_drawn_uniformly(monkeypatch):
  drawn = []
  monkeypatch.setattr(ta, 'apply_op', lambda image, name, m: drawn.append((name, m)) or image)
  rng = np.random.default_rng(0)
  image = _image(2, 2)
  n = 14 * 1000
  for _ in range(n):
    ta.trivial_augment(image, rng)
  names = [name for name, _ in drawn]
  counts = np.array([names.count(op) for op in ta.OPS])
  chi2 = ((counts - n / 14) ** 2 / (n / 14)).sum()
  assert chi2 < 34.5, counts  # The 99.9% point of chi-square with 13 degrees of freedom.
  bins = np.zeros(31)
  signs = []
  for name, m in drawn:
    table, signed = ta.SPACE[name]
    if table is None:
      assert m == 0.0
      continue
    matches = np.flatnonzero(table.astype(np.float64) == abs(m))
    assert len(matches), (name, m)
    if name != 'Posterize':  # Its bins share values; the others' are distinct.
      bins[matches[0]] += 1
    if signed and m:
      signs.append(m < 0)
  chi2 = ((bins - bins.mean()) ** 2 / bins.mean()).sum()
  assert chi2 < 59.7, bins  # 99.9% point, 30 degrees of freedom.
  assert abs(np.mean(signs) - 0.5) < 0.02


def test_deterministic_given_the_generator():
  images = [_image(16, 16, seed) for seed in range(30)]
  first = [ta.trivial_augment(x, np.random.default_rng(i)) for i, x in enumerate(images)]
  again = [ta.trivial_augment(x, np.random.default_rng(i)) for i, x in enumerate(images)]
  other = [ta.trivial_augment(x, np.random.default_rng(100 + i)) for i, x in enumerate(images)]
  for a, b in zip(first, again):
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(first, other))
  np.testing.assert_array_equal(images[0], _image(16, 16, 0))  # Inputs untouched.


# The pipelines.


def _cifar_split(n=40, size=8):
  """n random images; label i names example i."""
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, (n, size, size, 3), np.uint8)
  return cifar.ArraySplit(images, np.arange(n, dtype=np.int32))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for key in x:
      assert x[key].dtype == y[key].dtype, key
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _cifar_paper_batches(split, batch, seed):
  """CIFAR's host batches as they were before TrivialAugment existed."""
  ds = grain.MapDataset.range(len(split)).seed(seed).shuffle().repeat(None)
  ds = core.ProcessBlocks(ds, batch, 0, 1).batch(batch, drop_remainder=True)
  ds = ds.map(lambda idx: {'image': split.images[idx], 'label': split.labels[idx]})
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0)))


def _never(*args):
  raise AssertionError('TrivialAugment ran on the default path')


def test_cifar_default_path_is_unchanged(monkeypatch):
  split = _cifar_split()
  expected = _take(_cifar_paper_batches(split, 8, seed=3), 12)
  monkeypatch.setattr(ta, 'trivial_augment', _never)
  _assert_same(_take(iter(cifar.train_dataset(split, 8, seed=3)), 12), expected)
  off = cifar.train_dataset(split, 8, seed=3, trivial_augment=False)
  _assert_same(_take(iter(off), 12), expected)


def test_cifar_trivial_augment_changes_images_not_the_order():
  split = _cifar_split()
  plain = _take(iter(cifar.train_dataset(split, 8, seed=3)), 10)
  augmented = _take(iter(cifar.train_dataset(split, 8, seed=3, trivial_augment=True)), 10)
  changed = 0
  for p, a in zip(plain, augmented):
    np.testing.assert_array_equal(a['label'], p['label'])
    assert a['label'].dtype == np.int32 and a['image'].dtype == np.uint8
    assert a['image'].shape == p['image'].shape
    changed += sum(not np.array_equal(x, y) for x, y in zip(a['image'], p['image']))
  # Identity, and ops of magnitude 0, leave about 1/14 + 1/31 of them as they are.
  assert changed > 0.7 * 80


@pytest.mark.parametrize('count', [2, 4])
def test_cifar_trivial_augment_is_the_same_for_any_process_count(count):
  split = _cifar_split()
  one = iter(cifar.train_dataset(split, 8, seed=1, trivial_augment=True))
  parts = [
    iter(
      cifar.train_dataset(
        split, 8 // count, seed=1, process_index=p, process_count=count, trivial_augment=True
      )
    )
    for p in range(count)
  ]
  for _ in range(12):  # Across epochs.
    pieces = [next(it) for it in parts]
    expected = next(one)
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([b[key] for b in pieces]), expected[key])


def test_cifar_trivial_augment_resumes_from_a_saved_state():
  ds = cifar.train_dataset(_cifar_split(), 8, seed=0, trivial_augment=True)
  iterator = iter(ds)
  _take(iterator, 7)  # Into the second epoch.
  state = json.loads(json.dumps(iterator.get_state()))  # As checkpoints store it.
  expected = _take(iterator, 4)
  resumed = iter(ds)
  resumed.set_state(state)
  _assert_same(_take(resumed, 4), expected)


def test_cifar_config_turns_it_on_and_refuses_device_resident_images():
  config = config_lib.cifar10()
  split = tiny_splits()[0]
  config.input.trivial_augment = True
  batches = data.create(config, preloaded=tiny_splits()).train_batches(8, 0, 0, 1)
  expected = cifar.train_dataset(split, 8, 0, trivial_augment=True)
  _assert_same(_take(iter(batches), 3), _take(iter(expected), 3))
  with pytest.raises(ValueError, match='indices_only'):
    cifar.train_dataset(split, 8, 0, indices_only=True, trivial_augment=True)


def _jpeg(image):
  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, 'JPEG', quality=95)
  return out.getvalue()


def _imagenet_source(n=10, h=48, w=64):
  """n small JPEGs of random texture; label i names example i."""
  rng = np.random.default_rng(2)
  return [{'image': _jpeg(rng.integers(0, 256, (h, w, 3), np.uint8)), 'label': i} for i in range(n)]


def _paper_element(example, rng, crop_size, scale_range):
  return {
    'image': imagenet_train_views.train_example(example['image'], rng, crop_size, scale_range),
    'label': np.int32(example['label']),
  }


def _imagenet_paper_batches(source, batch, seed, crop_size, scale_range):
  """ImageNet's training batches as they were before the options existed."""
  element = functools.partial(_paper_element, crop_size=crop_size, scale_range=scale_range)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None).random_map(element)
  ds = core.ProcessBlocks(ds, batch, 0, 1).batch(batch, drop_remainder=True)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0)))


def _imagenet_train(source, **kwargs):
  return imagenet.train_dataset(
    source, local_batch_size=4, seed=7, crop_size=32, scale_range=(36, 60), **kwargs
  )


def test_imagenet_default_path_is_unchanged(monkeypatch):
  source = _imagenet_source()
  expected = _take(_imagenet_paper_batches(source, 4, 7, 32, (36, 60)), 6)
  monkeypatch.setattr(ta, 'trivial_augment', _never)
  _assert_same(_take(iter(_imagenet_train(source)), 6), expected)
  explicit = _imagenet_train(source, train_crop='scale', trivial_augment=False)
  _assert_same(_take(iter(explicit), 6), expected)


def test_imagenet_trivial_augment_changes_images_not_the_order():
  source = _imagenet_source()
  plain = _take(iter(_imagenet_train(source)), 5)
  augmented = _take(iter(_imagenet_train(source, trivial_augment=True)), 5)
  changed = 0
  for p, a in zip(plain, augmented):
    np.testing.assert_array_equal(a['label'], p['label'])
    assert a['image'].shape == (4, 32, 32, 3) and a['image'].dtype == np.uint8
    changed += sum(not np.array_equal(x, y) for x, y in zip(a['image'], p['image']))
  assert changed > 0.7 * 20


def test_imagenet_trivial_augment_is_the_same_for_any_process_count_and_resumes():
  source = _imagenet_source()
  kwargs = dict(trivial_augment=True, train_crop='random_resized')
  one = _take(iter(_imagenet_train(source, **kwargs)), 4)
  parts = [
    iter(
      imagenet.train_dataset(
        source, local_batch_size=2, seed=7, crop_size=32, process_index=p, process_count=2, **kwargs
      )
    )
    for p in range(2)
  ]
  for expected in one:
    pieces = [next(it) for it in parts]
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([b[key] for b in pieces]), expected[key])
  iterator = iter(_imagenet_train(source, **kwargs))
  _take(iterator, 2)
  state = iterator.get_state()
  resumed = iter(_imagenet_train(source, **kwargs))
  resumed.set_state(state)
  _assert_same(_take(resumed, 2), one[2:])
