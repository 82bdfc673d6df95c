"""Tests of the input pipeline: augmentation, batching, sharding, prefetching.

Everything but the last tests runs on small synthetic `ArraySplit`s whose
labels are `arange(N)` (so a label names its example) and whose images are
filled with the label (so images and labels can be checked to stay paired).
The real-data tests read `cifar10_jpeg` from ../shared/data/tfds and skip when
it is absent.
"""

import json
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import data
from resnet_jax.data import cifar

KEY = jax.random.key(0)
BATCH = 256  # Images per augment batch: enough to see every offset and flip.


def _split(n, size=2):
  """n examples; labels arange(n), image i filled with the value i."""
  labels = np.arange(n, dtype=np.int32)
  images = np.broadcast_to(labels[:, None, None, None] % 256, (n, size, size, 3)).astype(np.uint8)
  return cifar.ArraySplit(images, labels)


def _labels(iterator, num_batches):
  """Labels of the next `num_batches` batches, checking images match labels."""
  out = []
  for _ in range(num_batches):
    batch = next(iterator)
    assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
    np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], batch['label'] % 256)
    out.append(batch['label'])
  return np.concatenate(out)


def _next_within(iterator, timeout=10.0):
  """next(iterator), failing (not hanging) if it does not return in time."""
  result = {}

  def target():
    try:
      result['batch'] = next(iterator)
    except BaseException as e:  # pylint: disable=broad-except
      result['error'] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(timeout)
  if thread.is_alive():
    raise AssertionError(f'next() did not return within {timeout}s')
  if 'error' in result:
    raise result['error']
  return result['batch']


def _wait_for(condition, timeout=10.0):
  deadline = time.time() + timeout
  while not condition():
    if time.time() > deadline:
      raise AssertionError('timed out waiting for a condition')
    time.sleep(0.01)


def _arange_images(batch=BATCH, size=32):
  """Float images whose pixels are all distinct and nonzero."""
  n = batch * size * size * 3
  return np.arange(1, n + 1, dtype=np.float32).reshape(batch, size, size, 3)


def _find_crop(image, out, pad):
  """All (dy, dx, flip) that turn `image` into `out` by pad + crop + flip."""
  h, w, _ = image.shape
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  found = []
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[dy : dy + h, dx : dx + w]
      for flip in (False, True):
        if np.array_equal(out, crop[:, ::-1] if flip else crop):
          found.append((dy, dx, flip))
  return found


@pytest.fixture(scope='module')
def augmented():
  images = _arange_images()
  return images, np.asarray(cifar.augment(KEY, jnp.asarray(images), pad=4))


def test_augment_is_a_padded_crop_possibly_flipped(augmented):
  images, out = augmented
  assert out.shape == images.shape and out.dtype == np.float32
  for i in range(len(images)):
    found = _find_crop(images[i], out[i], pad=4)
    assert len(found) == 1, f'image {i}: {found}'


def test_augment_covers_all_offsets_and_both_flips(augmented):
  images, out = augmented
  crops = [_find_crop(images[i], out[i], pad=4)[0] for i in range(len(images))]
  dys, dxs, flips = zip(*crops)
  assert set(dys) == set(range(9))
  assert set(dxs) == set(range(9))
  assert set(flips) == {False, True}


def test_augment_is_deterministic_given_the_rng(augmented):
  images, out = augmented
  again = np.asarray(cifar.augment(KEY, jnp.asarray(images), pad=4))
  np.testing.assert_array_equal(again, out)
  other = np.asarray(cifar.augment(jax.random.key(1), jnp.asarray(images), pad=4))
  assert not np.array_equal(other, out)


def test_augment_pads_with_exact_zeros_on_narrow_borders():
  # uint8 images of 5 minus a mean image of 4: all ones after normalize.
  images = jnp.full((BATCH, 32, 32, 3), 5, jnp.uint8)
  ones = data.core.normalize(
    images, {'mean': jnp.full((32, 32, 3), 4.0, jnp.float32), 'std': jnp.ones(3)}
  )
  out = np.asarray(cifar.augment(KEY, ones, pad=4))
  assert set(np.unique(out)) <= {0.0, 1.0}
  some_padding = False
  for i, image in enumerate(out):
    inside = image[..., 0] == 1
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    expected = np.zeros_like(image)
    expected[r0:r1, c0:c1] = 1.0
    np.testing.assert_array_equal(image, expected, err_msg=f'image {i}')
    assert max(r0, 32 - r1, c0, 32 - c1) <= 4, f'image {i}'
    some_padding |= (r1 - r0, c1 - c0) != (32, 32)
  assert some_padding


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_augment_keeps_shape_and_dtype(dtype):
  images = jnp.ones((4, 8, 6, 3), dtype)
  out = cifar.augment(KEY, images, pad=2)
  assert out.shape == images.shape and out.dtype == dtype


def test_normalize_subtracts_the_mean_and_divides_by_the_std():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
  mean = rng.uniform(0, 255, (4, 6, 3)).astype(np.float32)
  out = data.core.normalize(jnp.asarray(images), {'mean': mean, 'std': np.ones(3, np.float32)})
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), images.astype(np.float32) - mean)
  std = np.array([2.0, 4.0, 8.0], np.float32)
  out = data.core.normalize(jnp.asarray(images), {'mean': mean, 'std': std})
  np.testing.assert_allclose(np.asarray(out), (images.astype(np.float32) - mean) / std, rtol=1e-6)
  # A per-pixel mean of another size (multi-scale views): its channel means.
  small = data.core.normalize(jnp.asarray(images[:, :2, :2]), {'mean': mean, 'std': std})
  np.testing.assert_allclose(
    np.asarray(small), (images[:, :2, :2].astype(np.float32) - mean.mean((0, 1))) / std, rtol=1e-5
  )


def test_mean_image_is_the_per_pixel_mean():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
  split = cifar.ArraySplit(images, np.zeros(7, np.int32))
  mean = cifar.mean_image(split)
  assert mean.shape == (4, 5, 3) and mean.dtype == np.float32
  np.testing.assert_allclose(mean, images.astype(np.float64).mean(0), rtol=1e-6)


def test_train_dataset_is_deterministic_given_the_seed():
  split = _split(48)
  first = _labels(iter(cifar.train_dataset(split, 8, seed=3)), 6)
  again = _labels(iter(cifar.train_dataset(split, 8, seed=3)), 6)
  other = _labels(iter(cifar.train_dataset(split, 8, seed=4)), 6)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


@pytest.mark.parametrize('n,batch', [(48, 8), (50, 8), (37, 5)])
def test_train_dataset_epoch_has_no_repeats(n, batch):
  labels = _labels(iter(cifar.train_dataset(_split(n), batch, seed=0)), n // batch)
  assert len(labels) == n // batch * batch
  assert len(set(labels.tolist())) == len(labels)
  assert set(labels.tolist()) <= set(range(n))


def test_train_dataset_reshuffles_every_epoch():
  n, batch = 48, 8
  labels = _labels(iter(cifar.train_dataset(_split(n), batch, seed=0)), 3 * n // batch)
  epochs = labels.reshape(3, n)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])


def test_train_dataset_shards_processes_disjointly():
  n, batch, count = 48, 4, 2
  shards = [
    _labels(
      iter(cifar.train_dataset(_split(n), batch, seed=0, process_index=p, process_count=count)),
      n // count // batch,
    )
    for p in range(count)
  ]
  assert not set(shards[0].tolist()) & set(shards[1].tolist())
  np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(n))


@pytest.mark.parametrize('count', [2, 4])
def test_global_batches_are_the_same_for_any_process_count(count):
  """Process p's batch k is block p of the one-process batch k (so the global
  batch and its order, which decides per-position crops and flips, do not
  depend on the number of processes)."""
  n, global_batch, num_batches = 40, 8, 12  # Across epochs.
  one = iter(cifar.train_dataset(_split(n), global_batch, seed=0))
  parts = [
    iter(
      cifar.train_dataset(
        _split(n), global_batch // count, seed=0, process_index=p, process_count=count
      )
    )
    for p in range(count)
  ]
  for _ in range(num_batches):
    np.testing.assert_array_equal(np.concatenate([_labels(it, 1) for it in parts]), _labels(one, 1))


def test_train_dataset_state_resumes_the_order():
  ds = cifar.train_dataset(_split(40), 8, seed=0)
  iterator = iter(ds)
  _labels(iterator, 7)  # Into the second epoch.
  state = json.loads(json.dumps(iterator.get_state()))  # As checkpoints store it.
  expected = _labels(iterator, 3)
  resumed = iter(ds)
  resumed.set_state(state)
  np.testing.assert_array_equal(_labels(resumed, 3), expected)


@pytest.mark.parametrize(
  'n,batch,count',
  [
    (103, 10, 1),
    (103, 7, 1),
    (103, 200, 1),
    (103, 103, 1),
    (103, 10, 2),
    (103, 7, 3),
    (103, 200, 3),
    (100, 10, 2),
    (2, 4, 3),
  ],
)
def test_eval_batches_score_every_example_once(n, batch, count):
  split = _split(n)
  seen, num_batches = [], set()
  for p in range(count):
    batches = list(cifar.eval_batches(split, batch, p, count))
    num_batches.add(len(batches))
    for b in batches:
      assert b['image'].shape == (batch, 2, 2, 3) and b['image'].dtype == np.uint8
      assert b['label'].shape == (batch,) and b['label'].dtype == np.int32
      assert b['mask'].shape == (batch,) and b['mask'].dtype == np.float32
      assert set(np.unique(b['mask'])) <= {0.0, 1.0}
      real = b['mask'] == 1
      np.testing.assert_array_equal(b['image'][real, 0, 0, 0], b['label'][real] % 256)
      assert not b['image'][~real].any() and not b['label'][~real].any()
      seen.append(b['label'][real])
  assert len(num_batches) == 1, f'processes yield different numbers of batches: {num_batches}'
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))


def _map_counting(ds, reads):
  def count(batch):
    reads.append(1)
    return batch

  return ds.map(count)


def test_prefetch_yields_the_converted_source_batches_in_order():
  ds = cifar.train_dataset(_split(40), 8, seed=0)
  expected = _labels(iter(ds), 12)
  batches = data.core.prefetch(ds, lambda b: {**b, 'tenfold': b['label'] * 10}, depth=3)
  try:
    got = [next(batches) for _ in range(12)]
    np.testing.assert_array_equal(np.concatenate([b['label'] for b in got]), expected)
    np.testing.assert_array_equal(np.concatenate([b['tenfold'] for b in got]), expected * 10)
  finally:
    batches.close()


def test_prefetch_state_is_after_the_last_batch_handed_out():
  ds = cifar.train_dataset(_split(40), 8, seed=0)
  reads, depth, k = [], 2, 3
  batches = data.core.prefetch(_map_counting(ds, reads), lambda b: b, depth=depth)
  try:
    initial = batches.get_state()
    _labels(batches, k)
    _wait_for(lambda: len(reads) >= k + depth)  # The thread has read ahead.
    state = batches.get_state()
    expected = _labels(batches, 2)
  finally:
    batches.close()
  resumed = iter(ds)
  resumed.set_state(state)
  np.testing.assert_array_equal(_labels(resumed, 2), expected)
  resumed.set_state(initial)  # Before any batch: the start of the order.
  np.testing.assert_array_equal(_labels(resumed, 1), _labels(iter(ds), 1))


def test_prefetch_propagates_convert_errors():
  ds = cifar.train_dataset(_split(40), 8, seed=0)

  def convert(batch):
    raise ValueError(f'cannot convert a batch of {len(batch["label"])}')

  batches = data.core.prefetch(ds, convert)
  try:
    with pytest.raises(ValueError, match='cannot convert a batch of 8'):
      _next_within(batches)
  finally:
    batches.close()
