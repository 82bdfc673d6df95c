"""Tests of the ImageNet input pipeline: decoding, views, lighting, datasets.

Most tests use synthetic images: linear colour ramps (red encodes x, green
encodes y), whose resized crops reveal the scale, offset and flip they were
cut with, and small fake sources (lists of {'image': JPEG bytes, 'label': i})
whose labels name their example. The last tests read imagenette224 from
../shared/data/tfds and skip when it is absent.
"""

import io
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from resnet_jax.data import imagenet, imagenet_train_views, imagenet_views

from helpers import DATA_DIR


def _ramp(h, w):
  """RGB image with red = x and green = y, each scaled to 0..255."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  r, g = x * 255 / (w - 1), y * 255 / (h - 1)
  return np.stack([r, g, np.full_like(r, 128)], -1).round().astype(np.uint8)


def _jpeg(image, mode=None, fmt='JPEG', quality=95):
  out = io.BytesIO()
  pil = PIL.Image.fromarray(image)
  pil = pil.convert(mode) if mode else pil
  pil.save(out, fmt, quality=quality) if fmt == 'JPEG' else pil.save(out, fmt)
  return out.getvalue()


def _source(n, h=48, w=64):
  """n small JPEG examples; label i, image i a ramp brightened by i."""
  ramp = _ramp(h, w).astype(np.int32)
  return [
    {'image': _jpeg(np.clip(ramp + 3 * i, 0, 255).astype(np.uint8)), 'label': i} for i in range(n)
  ]


def _fit(profile, full_range):
  """(slope, intercept) in source pixels of a 0..255 ramp profile."""
  slope, intercept = np.polyfit(np.arange(len(profile)), profile, 1)
  per_pixel = 255 / (full_range - 1)
  return slope / per_pixel, intercept / per_pixel


@pytest.mark.parametrize('h, w', [(300, 400), (500, 333), (224, 224)])
def test_train_view_is_a_scaled_crop_within_the_image(h, w):
  image = _ramp(h, w)
  rng = np.random.default_rng(0)
  scales, flips = [], []
  for _ in range(200):
    view = imagenet_train_views.train_view(image, rng)
    assert view.shape == (224, 224, 3) and view.dtype == np.uint8
    # Source pixels per output pixel, from the ramps; S = shorter / that.
    dx, x0 = _fit(view[:, :, 0].mean(0).astype(np.float64), w)
    dy, y0 = _fit(view[:, :, 1].mean(1).astype(np.float64), h)
    assert dy > 0
    flips.append(dx < 0)
    assert abs(abs(dx) - dy) < 0.02 * dy  # Same scale on both axes.
    scale = min(h, w) / dy
    assert 256 * 0.98 <= scale <= 480 * 1.02
    scales.append(scale)
    # The window lies inside the image (a pixel of slack for rounding).
    xs = sorted([x0, x0 + dx * 223])
    ys = [y0, y0 + dy * 223]
    assert -1.5 <= xs[0] and xs[1] <= w + 0.5
    assert -1.5 <= ys[0] and ys[1] <= h + 0.5
  assert min(scales) < 290 and max(scales) > 440  # S covers [256, 480].
  assert 0.35 < np.mean(flips) < 0.65


def test_train_flip_is_a_mirror_image():
  image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), np.uint8)
  for seed in range(10):
    crop = imagenet_train_views.sample_train_crop(300, 400, np.random.default_rng(seed))
    plain = imagenet_train_views.render_train_crop(
      image, imagenet_train_views.TrainCrop(**{**vars(crop), 'flip': False})
    )
    mirrored = imagenet_train_views.render_train_crop(
      image, imagenet_train_views.TrainCrop(**{**vars(crop), 'flip': True})
    )
    np.testing.assert_array_equal(mirrored, plain[:, ::-1])


def test_train_example_decodes_reduced_and_matches_train_view():
  jpeg = _jpeg(_ramp(1100, 1400))  # Shorter 1100: decoded at 1/2 or 1/4.
  for seed in range(5):
    crop = imagenet_train_views.sample_train_crop(1100, 1400, np.random.default_rng(seed))
    assert imagenet_views.dct_factor(1100, 1400, crop.scale) in (2, 4)
    reduced = imagenet_train_views.train_example(jpeg, np.random.default_rng(seed))
    full = imagenet_train_views.train_view(imagenet_views.decode(jpeg), np.random.default_rng(seed))
    assert reduced.shape == (224, 224, 3)
    assert np.abs(reduced.astype(int) - full).mean() < 2


def test_decode_reduced_scale_and_odd_files():
  image = _ramp(600, 800)
  jpeg = _jpeg(image)
  for name in imagenet_views.DECODERS:
    decoder = imagenet_views.DECODERS[name]
    assert decoder(jpeg, None).shape == (600, 800, 3), name
    assert decoder(jpeg, 256).shape == (300, 400, 3), name  # 1/4 is too small.
    assert decoder(jpeg, 100).shape == (150, 200, 3), name
    assert decoder(jpeg, 1).shape == (75, 100, 3), name
  assert np.abs(imagenet_views.decode(jpeg).astype(int) - image).mean() < 2
  grey = imagenet_views.decode(_jpeg(image, mode='L'))
  assert grey.shape == (600, 800, 3)
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  assert imagenet_views.decode(_jpeg(image, mode='L'), 256).shape == (300, 400, 3)
  cmyk = imagenet_views.decode(_jpeg(image, mode='CMYK'))
  assert cmyk.shape == (600, 800, 3)
  assert np.abs(cmyk.astype(int) - image).mean() < 4
  png = _jpeg(image, fmt='PNG')  # A PNG in a .JPEG file, as ImageNet has.
  assert imagenet_views.image_size(png) == (600, 800)
  np.testing.assert_array_equal(imagenet_views.decode(png, 256), image)
  assert imagenet_views.image_size(jpeg) == (600, 800)
  sizes = imagenet.image_sizes([{'image': jpeg}, {'image': png}], [1, 0])
  np.testing.assert_array_equal(sizes, [[600, 800], [600, 800]])


def test_resize_shorter_keeps_aspect():
  image = np.zeros((300, 401, 3), np.uint8)
  assert imagenet_views.resize_shorter(image, 256).shape == (256, 342, 3)
  assert imagenet_views.resize_shorter(image.transpose(1, 0, 2), 256).shape == (342, 256, 3)


@pytest.mark.parametrize('h, w', [(300, 400), (410, 290)])
def test_ten_crops_and_center_view_geometry(h, w):
  image = np.random.default_rng(2).integers(0, 256, (h, w, 3), np.uint8)
  resized = imagenet_views.resize_shorter(image, 256)
  rh, rw = resized.shape[:2]
  assert min(rh, rw) == 256
  crops = imagenet_views.ten_crop_views(image)
  assert crops.shape == (10, 224, 224, 3) and crops.dtype == np.uint8
  ct, cl = (rh - 224) // 2, (rw - 224) // 2
  expected = [
    resized[:224, :224],
    resized[:224, -224:],
    resized[-224:, :224],
    resized[-224:, -224:],
    resized[ct : ct + 224, cl : cl + 224],
  ]
  for i, crop in enumerate(expected):
    np.testing.assert_array_equal(crops[i], crop)
    np.testing.assert_array_equal(crops[5 + i], crop[:, ::-1])
  np.testing.assert_array_equal(imagenet_views.center_view(image), expected[4])


def test_multi_scale_views_place_the_whole_image_top_left():
  image = np.random.default_rng(3).integers(0, 256, (300, 400, 3), np.uint8)
  canvas = imagenet_views.canvas_shape(300, 400, 224)
  views, (h, w) = imagenet_views.multi_scale_views(image, 224, canvas)
  resized = imagenet_views.resize_shorter(image, 224)
  assert (h, w) == resized.shape[:2] == (224, 299)
  assert views.shape == (2,) + canvas + (3,)
  np.testing.assert_array_equal(views[0, :h, :w], resized)
  np.testing.assert_array_equal(views[1, :h, :w], resized[:, ::-1])
  assert not views[:, h:].any() and not views[:, :, w:].any()


def test_canvas_shape_contains_the_image_with_few_shapes():
  rng = np.random.default_rng(4)
  for scale in (224, 256, 384, 480, 640):
    shapes = set()
    for _ in range(2000):
      shorter = int(rng.integers(50, 1500))
      longer = int(round(shorter * np.exp(rng.uniform(0, np.log(6)))))
      h, w = (shorter, longer) if rng.random() < 0.5 else (longer, shorter)
      rh, rw = imagenet_views.resized_shape(h, w, scale)
      hc, wc = imagenet_views.canvas_shape(h, w, scale)
      assert hc >= rh and wc >= rw and hc % 32 == 0 and wc % 32 == 0
      assert (hc >= wc) == (h > w) or hc == wc
      shapes.add((hc, wc))
    assert len(shapes) <= 15, (scale, sorted(shapes))


def test_lighting_matches_pca_noise_statistics():
  n, std = 20000, 0.1
  images = jnp.full((n, 2, 3, 3), 100.0)
  out = np.asarray(imagenet.lighting(jax.random.key(0), images, std))
  offsets = out[:, 0, 0] - 100
  # One offset per image, the same at every pixel.
  np.testing.assert_allclose(
    out - 100, np.broadcast_to(offsets[:, None, None], out.shape), atol=1e-4
  )
  vec, val = imagenet.PCA_EIGVEC.astype(np.float64), imagenet.PCA_EIGVAL
  expected_cov = 255**2 * std**2 * vec @ np.diag(val**2) @ vec.T
  sd = np.sqrt(np.diag(expected_cov))
  np.testing.assert_allclose(offsets.mean(0), 0, atol=float(4 * sd.max() / np.sqrt(n)))
  np.testing.assert_allclose(np.cov(offsets.T), expected_cov, atol=0.03 * expected_cov.max())
  # Along each eigenvector (a column of PCA_EIGVEC) the offset has
  # std 255 * std * eigval: the transforms.lua convention, not its transpose.
  coefficients = offsets @ vec / 255
  np.testing.assert_allclose(coefficients.std(0), std * val, rtol=0.05)


def test_eval_dataset_scores_every_example_once():
  source = _source(23)
  for batch in (7, 10):
    for count in (1, 3):
      seen, num_batches = [], set()
      for index in range(count):
        batches = list(
          imagenet.eval_dataset(
            source,
            view='center',
            local_batch_size=batch,
            process_index=index,
            process_count=count,
            resize_size=40,
            crop_size=32,
          )
        )
        num_batches.add(len(batches))
        for b in batches:
          assert b['image'].shape == (batch, 1, 32, 32, 3)
          assert b['image'].dtype == np.uint8 and b['mask'].dtype == np.float32
          real = b['mask'] == 1
          np.testing.assert_array_equal(b['index'][~real], -1)
          assert not b['image'][~real].any()
          np.testing.assert_array_equal(b['label'][real], b['index'][real])
          seen.extend(b['index'][real].tolist())
      assert len(num_batches) == 1  # Every process yields the same number.
      assert sorted(seen) == list(range(23)), (batch, count)


def test_eval_dataset_ten_crop_views():
  source = _source(5)
  batch = next(
    iter(
      imagenet.eval_dataset(
        source, view='ten_crop', local_batch_size=4, resize_size=40, crop_size=32
      )
    )
  )
  assert batch['image'].shape == (4, 10, 32, 32, 3)
  image = imagenet_views.decode(source[2]['image'])
  np.testing.assert_array_equal(batch['image'][2], imagenet_views.ten_crop_views(image, 40, 32))


def test_multi_scale_dataset_pads_to_num_batches():
  source = _source(9)
  canvas = imagenet_views.canvas_shape(48, 64, 40)
  batches = list(
    imagenet.multi_scale_dataset(
      source, [8, 2, 5], scale=40, canvas_hw=canvas, local_batch_size=2, num_batches=3
    )
  )
  assert len(batches) == 3
  index = np.concatenate([b['index'] for b in batches])
  np.testing.assert_array_equal(index, [8, 2, 5, -1, -1, -1])
  first = batches[0]
  assert first['image'].shape == (2, 2) + canvas + (3,)
  assert first['pixel_mask'].shape == (2,) + canvas
  assert first['pixel_mask'][0].sum() == 40 * 53
  assert not batches[2]['pixel_mask'].any() and not batches[2]['mask'].any()
  np.testing.assert_array_equal(first['label'], [8, 2])


def _train(source, **kwargs):
  return imagenet.train_dataset(
    source, local_batch_size=4, seed=7, crop_size=32, scale_range=(36, 60), **kwargs
  )


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['label'], y['label'])
    np.testing.assert_array_equal(x['image'], y['image'])


def test_train_dataset_shapes_shuffles_and_shards():
  source = _source(10)
  batches = _take(iter(_train(source)), 5)  # Two epochs of 10.
  assert batches[0]['image'].shape == (4, 32, 32, 3)
  assert batches[0]['image'].dtype == np.uint8 and batches[0]['label'].dtype == np.int32
  labels = np.concatenate([b['label'] for b in batches])
  assert sorted(labels[:10]) == list(range(10))  # First epoch: each once.
  assert list(labels[:10]) != list(range(10))
  assert list(labels[10:20]) != list(labels[:10])  # Reshuffled.
  shards = [
    np.concatenate(
      [b['label'] for b in _take(iter(_train(source, process_index=i, process_count=2)), 1)]
    )
    for i in range(2)
  ]
  assert not set(shards[0]) & set(shards[1])


def test_train_dataset_resumes_from_state_mid_epoch():
  source = _source(10)
  iterator = iter(_train(source))
  _take(iterator, 3)
  state = iterator.get_state()
  expected = _take(iterator, 4)  # Crosses two epoch boundaries.
  resumed = iter(_train(source))
  resumed.set_state(state)
  _assert_same(_take(resumed, 4), expected)


@pytest.mark.slow
def test_datasets_same_for_any_num_workers():
  source = _source(12)
  expected = _take(iter(_train(source)), 5)
  iterator = iter(_train(source, num_workers=2))
  try:
    _assert_same(_take(iterator, 5), expected)
  finally:
    iterator.close()
  kwargs = dict(view='center', local_batch_size=5, resize_size=40, crop_size=32)
  expected = list(imagenet.eval_dataset(source, **kwargs))
  _assert_same(list(imagenet.eval_dataset(source, num_workers=2, **kwargs)), expected)


def test_open_source_missing_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match='tfds build imagenet2012'):
    imagenet.open_source('imagenet2012', 'train', str(tmp_path))


@pytest.fixture(scope='module')
def imagenette():
  if not os.path.isdir(os.path.join(DATA_DIR, 'imagenette224')):
    pytest.skip(f'imagenette224 not found under {DATA_DIR}')
  return imagenet.open_source('imagenette224', 'validation[:12]', DATA_DIR)


def test_imagenette_examples_decode_and_pass_through_views(imagenette):
  rng = np.random.default_rng(0)
  for i in range(len(imagenette)):
    example = imagenette[i]
    assert isinstance(example['image'], bytes)
    image = imagenet_views.decode(example['image'])
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert imagenet_views.image_size(example['image']) == image.shape[:2]
    view = imagenet_train_views.train_example(example['image'], rng)
    assert view.shape == (224, 224, 3) and view.dtype == np.uint8
  batch = next(iter(imagenet.train_dataset(imagenette, local_batch_size=4, seed=0)))
  assert batch['image'].shape == (4, 224, 224, 3)
  batch = next(iter(imagenet.eval_dataset(imagenette, view='ten_crop', local_batch_size=5)))
  assert batch['image'].shape == (5, 10, 224, 224, 3) and batch['mask'].all()
  assert 'tensorflow' not in sys.modules
