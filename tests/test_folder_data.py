"""Tests of folder datasets (`data.folder`), their use by both families, and
scripts/sort_imagenet_val.py.

Folders are built in tmp_path from real ImageNet JPEGs (a few of imagenette224,
from ../shared/data/tfds; those tests skip when it is absent) and from small
Pillow-made PNGs and JPEGs.
"""

import io
import os
import shutil
import subprocess
import sys
import types

import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from resnet_jax import config_lib, data, errors
from resnet_jax.data import catalog, cifar, folder, imagenet

from helpers import DATA_DIR, ROOT, has_dataset, png_bytes, write_bytes

TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 2


@pytest.fixture(scope='module')
def jpegs():
  """{wnid: [JPEG bytes]} of three imagenette224 classes, six images each."""
  if not has_dataset('imagenette224'):
    pytest.skip(f'imagenette224 not found under {DATA_DIR}')
  source = imagenet.open_source('imagenette224', 'train[:80]', DATA_DIR)
  by_class = {}
  for i in range(len(source)):
    example = source[i]
    wnid = example['file_name'].decode().split('/')[1]
    by_class.setdefault(wnid, []).append(example['image'])
  full = sorted(w for w, images in by_class.items() if len(images) >= 6)
  assert len(full) >= 3, 'the first 80 imagenette224 examples have three classes of six'
  return {w: by_class[w][: TRAIN_PER_CLASS + VAL_PER_CLASS] for w in full[:3]}


def _make_folder(root, jpegs, eval_dir='val'):
  """ROOT/train/<wnid>/ (4 JPEGs each, a PNG in the first class) and
  ROOT/<eval_dir>/<wnid>/ (2 each), plus files to ignore."""
  for wnid, images in jpegs.items():
    for i, content in enumerate(images[:TRAIN_PER_CLASS]):
      write_bytes(os.path.join(root, 'train', wnid, f'{wnid}_{i}.JPEG'), content)
    for i, content in enumerate(images[TRAIN_PER_CLASS:]):
      write_bytes(os.path.join(root, eval_dir, wnid, f'val_{wnid}_{i}.JPEG'), content)
  first = sorted(jpegs)[0]
  png = png_bytes(np.asarray(PIL.Image.open(io.BytesIO(jpegs[first][0])).convert('RGB')))
  write_bytes(os.path.join(root, 'train', first, 'extra.png'), png)
  write_bytes(os.path.join(root, 'train', first, 'notes.txt'), b'not an image')
  write_bytes(os.path.join(root, 'train', first, '.hidden.jpg'), b'')
  write_bytes(os.path.join(root, 'train', '.ipynb_checkpoints', 'x.jpg'), b'')
  return str(root)


@pytest.fixture
def root(tmp_path, jpegs):
  return _make_folder(tmp_path / 'images', jpegs)


def test_labels_come_from_the_sorted_train_class_folders(root, jpegs):
  index = folder.index(root)
  assert index.class_names == tuple(sorted(jpegs))
  assert index.split_names() == ('train', 'val')
  assert index.num_examples('train') == 3 * TRAIN_PER_CLASS + 1  # .txt and hidden ignored.
  assert index.num_examples('val') == 3 * VAL_PER_CLASS
  for split in index.split_names():
    assert index.labels[split].dtype == np.int64
    for name, label in zip(index.files[split], index.labels[split]):
      assert name.split('/')[:2] == [split, index.class_names[label]]
  source = index.source('train')
  for i in range(len(source)):
    example = source[i]
    assert isinstance(example['label'], np.int64) and example['label'] == source.labels[i]
    assert example['file_name'] == index.files['train'][i].encode()
    with open(os.path.join(root, index.files['train'][i]), 'rb') as f:
      assert example['image'] == f.read()
  png = index.files['train'].index(f'train/{index.class_names[0]}/extra.png')
  assert source[png]['image'].startswith(b'\x89PNG')
  assert [e['file_name'] for e in source.__getitems__([2, 0])] == [
    source[2]['file_name'],
    source[0]['file_name'],
  ]
  with pytest.raises(IndexError):
    source[len(source)]


@pytest.mark.parametrize('eval_dir', ['validation', 'test'])
def test_other_evaluation_folder_names(tmp_path, jpegs, eval_dir):
  index = folder.index(_make_folder(tmp_path, jpegs, eval_dir))
  assert index.split_names() == ('train', eval_dir)
  assert index.num_examples(eval_dir) == 3 * VAL_PER_CLASS


def test_no_evaluation_folder_leaves_train_alone(root):
  shutil.rmtree(os.path.join(root, 'val'))
  index = folder.index(root)
  assert index.split_names() == ('train',)
  with pytest.raises(errors.ConfigError, match=r"no 'val' split.*its splits: train \("):
    index.source('val')


def test_order_is_fixed_mixed_and_independent_of_the_root(root, tmp_path):
  index = folder.index(root)
  assert folder.index(root + '/') is index  # Cached per absolute root.
  files = index.files['train']
  assert list(files) != sorted(files)  # Permuted, not class after class.
  copy = folder.index(shutil.copytree(root, tmp_path / 'elsewhere' / 'copy'))
  assert copy.files == index.files
  for split in index.split_names():
    np.testing.assert_array_equal(copy.labels[split], index.labels[split])
  # The held-out tail mixes classes, as TFDS's shuffled records do.
  assert len(set(index.source('train[-4:]').labels.tolist())) > 1
  # The order is a function of the names alone (a change would move held-out
  # examples into training): pinned.
  assert folder._order(['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg', 'e.jpg']) == [0, 4, 3, 2, 1]


SPECS = [
  'train',
  'train[:-2]',
  'train[-2:]',
  'train[2:5]',
  'train[3:1]',
  'train[:13]',
  'train[-13:]',
  'train[10%:50%]',
  'train[-50%:]',
  'train[12.5%:]',
  'train[:-1_0]',
  'val[:3]',
]


@pytest.mark.parametrize('spec', SPECS)
def test_slices_follow_tfds(root, spec):
  index = folder.index(root)
  sizes = {s: types.SimpleNamespace(num_examples=index.num_examples(s)) for s in ('train', 'val')}
  (want,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute(sizes)
  expected = index.files[want.splitname][want.from_ : want.to]
  source = index.source(spec)
  assert source.files == expected
  assert index.num_examples(spec) == len(source) == len(expected)
  labels = index.labels[want.splitname][want.from_ : want.to]
  np.testing.assert_array_equal(source.labels, labels)


def test_train_slices_partition_train(root):
  index = folder.index(root)
  head, tail = index.source('train[:-2]'), index.source('train[-2:]')
  assert head.files + tail.files == index.files['train']
  assert not set(head.files) & set(tail.files)


@pytest.mark.parametrize(
  'spec', ['nope', 'train[:14]', 'train[:]', 'train[1.5:]', 'train[1:2:3]', 'train[a:]', 'tr ain']
)
def test_bad_splits_name_the_splits(root, spec):
  index = folder.index(root)
  with pytest.raises(errors.ConfigError, match=r'its splits: train, val') as e:
    index.source(spec)
  assert '\n' not in str(e.value)
  with pytest.raises(errors.ConfigError):
    index.num_examples(spec)


def _bad_files(root, jpegs):
  """A truncated JPEG, an empty file and a truncated PNG in train; returns them."""
  wnid = sorted(jpegs)[1]
  jpeg = jpegs[wnid][0]
  bad = {
    f'train/{wnid}/cut.jpg': jpeg[: len(jpeg) // 2],
    f'train/{wnid}/empty.jpg': b'',
    f'train/{wnid}/cut.png': png_bytes(np.zeros((8, 8, 3), np.uint8))[:-12],
  }
  for name, content in bad.items():
    write_bytes(os.path.join(root, name), content)
  return sorted(bad)


def _odd_but_whole(root, jpegs):
  """Whole JPEGs that a head-and-tail check reads only in part: a header
  past the first 64 KiB, and padding longer than the tail read."""
  wnid = sorted(jpegs)[2]
  jpeg = jpegs[wnid][0]
  app = b'\xff\xef' + (65533).to_bytes(2, 'big') + bytes(65531)  # Two 64 KiB APP15 segments.
  odd = {
    f'train/{wnid}/big_header.jpg': jpeg[:2] + app + app + jpeg[2:],
    f'train/{wnid}/padded.jpg': jpeg + bytes(5000) + b'\n',
  }
  for name, content in odd.items():
    write_bytes(os.path.join(root, name), content)
  return sorted(odd)


def test_unreadable_files_fail_naming_the_file(root, jpegs):
  bad = _bad_files(root, jpegs)
  odd = _odd_but_whole(root, jpegs)
  index = folder.index(root)
  assert index.skipped == ()
  source = index.source('train')
  reasons = {'cut.jpg': 'truncated JPEG', 'empty.jpg': 'empty file', 'cut.png': 'truncated PNG'}
  for name in bad:
    with pytest.raises(errors.DataError) as e:
      source[source.files.index(name)]
    message = str(e.value)
    assert message.startswith(f'unreadable image {os.path.join(root, name)}: ')
    assert reasons[os.path.basename(name)] in message
    assert 'skip_bad_images=True' in message and '\n' not in message
  for name in odd:
    assert source[source.files.index(name)]['image']


def test_skip_bad_leaves_unreadable_files_out(root, jpegs):
  bad = _bad_files(root, jpegs)
  odd = _odd_but_whole(root, jpegs)
  write_bytes(os.path.join(root, 'val', sorted(jpegs)[0], 'garbage.jpeg'), b'GIF89a, not really')
  index = folder.index(root, skip_bad=True)
  assert index.skipped == tuple(sorted(bad + [f'val/{sorted(jpegs)[0]}/garbage.jpeg']))
  assert set(odd) <= set(index.files['train'])
  assert index.num_examples('train') == 3 * TRAIN_PER_CLASS + 1 + len(odd)
  source = index.source('train')
  assert all(source[i]['image'] for i in range(len(source)))
  assert folder.index(root, skip_bad=False).num_examples('train') == index.num_examples('train') + 3


def test_the_skipped_files_warning_goes_to_stderr_once(root, jpegs, capsys):
  _bad_files(root, jpegs)
  inp = ml_collections.ConfigDict(
    {'dataset': 'folder', 'data_dir': root, 'family': None, 'skip_bad_images': True}
  )
  catalog.dataset_info(inp)
  catalog.dataset_info(inp)
  out, err = capsys.readouterr()
  assert err.count('warning: skipped 3 unreadable image files') == 1 and not out


def test_a_class_whose_files_are_all_bad_keeps_its_label(root, jpegs):
  first = sorted(jpegs)[0]
  for name in os.listdir(os.path.join(root, 'train', first)):
    if name.lower().endswith(folder.IMAGE_SUFFIXES):
      write_bytes(os.path.join(root, 'train', first, name), b'')
  index = folder.index(root, skip_bad=True)
  assert index.class_names == tuple(sorted(jpegs))  # The other labels do not move.
  assert 0 not in index.labels['train'] and set(index.labels['train'].tolist()) == {1, 2}
  assert len(index.skipped) == TRAIN_PER_CLASS + 1


def test_an_empty_class_folder_is_an_error(root):
  os.makedirs(os.path.join(root, 'train', 'n00000000', 'sub'))
  write_bytes(os.path.join(root, 'train', 'n00000000', 'readme.txt'), b'')
  for skip_bad in (False, True):
    with pytest.raises(errors.DataError, match=r'n00000000 holds no image files'):
      folder.index(root, skip_bad)
  shutil.rmtree(os.path.join(root, 'train', 'n00000000'))
  os.makedirs(os.path.join(root, 'val', 'n00000000'))
  with pytest.raises(errors.DataError, match=r'val/n00000000 holds no image files'):
    folder.index(root)


def test_nested_class_folders_are_read(root, jpegs):
  first = sorted(jpegs)[0]
  write_bytes(os.path.join(root, 'train', first, 'more', 'deep.jpg'), jpegs[first][0])
  index = folder.index(root)
  label = index.labels['train'][index.files['train'].index(f'train/{first}/more/deep.jpg')]
  assert label == 0


def test_layout_errors_name_the_path_and_the_layout(tmp_path, root, jpegs):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(errors.MissingError, match=f'image folder {missing} does not exist'):
    folder.index(missing)
  no_train = tmp_path / 'no_train'
  os.makedirs(no_train / 'val' / 'n01440764')
  with pytest.raises(errors.MissingError, match=r'has no train/ folder.*ROOT/train/<class>/\*.jpg'):
    folder.index(str(no_train))
  with pytest.raises(errors.ConfigError, match='data_dir=ROOT'):
    folder.index(None)
  stranger = os.path.join(root, 'val', 'n99999999')
  write_bytes(os.path.join(stranger, 'x.jpg'), jpegs[sorted(jpegs)[0]][0])
  with pytest.raises(errors.DataError, match=f'folder {stranger} is not a class of {root}/train'):
    folder.index(root)
  shutil.rmtree(stranger)
  write_bytes(os.path.join(root, 'val', 'ILSVRC2012_val_00000001.JPEG'), b'')
  with pytest.raises(errors.DataError, match=r'holds image files directly.*sort_imagenet_val'):
    folder.index(root)


def _batches(ds, n):
  return [b for _, b in zip(range(n), iter(ds))]


def test_imagenet_pipeline_over_a_folder(root):
  index = folder.index(root)
  train = index.source('train')
  make = lambda seed: imagenet.train_dataset(
    train, local_batch_size=4, seed=seed, crop_size=64, scale_range=(64, 96)
  )
  batches = _batches(make(0), 4)  # Past the 13-image epoch.
  for batch in batches:
    assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.uint8
    assert batch['label'].dtype == np.int32
    assert set(batch['label'].tolist()) <= {0, 1, 2}
  for again, batch in zip(_batches(make(0), 4), batches):
    np.testing.assert_array_equal(again['image'], batch['image'])
    np.testing.assert_array_equal(again['label'], batch['label'])
  assert not np.array_equal(_batches(make(1), 1)[0]['image'], batches[0]['image'])
  # A saved position resumes to the same next batch.
  it = iter(make(0))
  next(it)
  state = it.get_state()
  expected = next(it)
  resumed = iter(make(0))
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['image'], expected['image'])

  val = index.source('val')
  evals = list(
    imagenet.eval_dataset(val, view='center', local_batch_size=4, resize_size=72, crop_size=64)
  )
  assert [b['image'].shape for b in evals] == [(4, 1, 64, 64, 3)] * 2
  mask = np.concatenate([b['mask'] for b in evals])
  np.testing.assert_array_equal(mask, [1] * 6 + [0] * 2)
  labels = np.concatenate([b['label'] for b in evals])[:6]
  np.testing.assert_array_equal(labels, val.labels)


def test_both_families_read_a_folder_named_in_the_config(root, tmp_path):
  config = config_lib.imagenette('resnet18')
  config.input.update(dataset='folder', data_dir=root, num_workers=0, num_holdout=3)
  config.input.update(image_size=64, scale_range=(64, 96))
  config.eval.update(resize_size=72, crop_size=64)
  dataset = data.create(config)
  assert isinstance(dataset, imagenet.ImagenetData)
  assert dataset.num_examples('holdout') == 3 and dataset.num_examples('val') == 6
  assert next(iter(dataset.train_batches(4, 0, 0, 1)))['image'].shape == (4, 64, 64, 3)
  evals = list(dataset.eval_batches('val', 'center', 4, 0, 1))
  assert sum(b['mask'].sum() for b in evals) == 6

  _tiny_folder(tmp_path / 'tiny', [(8, 8)] * 6)
  config = config_lib.cifar10('cifar_resnet20')
  config.input.update(dataset='folder', data_dir=str(tmp_path / 'tiny'), family='cifar')
  config.input.holdout_validation = False
  dataset = data.create(config)
  assert isinstance(dataset, cifar.CifarData)
  assert dataset.image_shape == (8, 8, 3)
  assert next(iter(dataset.train_batches(2, 0, 0, 1)))['image'].shape == (2, 8, 8, 3)


def test_a_bad_file_read_in_a_grain_worker_arrives_as_one_line(root, jpegs):
  bad = _bad_files(root, jpegs)
  source = folder.index(root).source('train')
  ds = imagenet.train_dataset(
    source, local_batch_size=4, seed=0, crop_size=32, scale_range=(32, 40), num_workers=1
  )
  it = iter(ds)
  # The type and message cross the process boundary unchanged: `main`'s
  # one-line report needs nothing more.
  with pytest.raises(errors.DataError) as e:
    for _ in range(10):  # Two epochs: every file is read.
      next(it)
  it.close()
  message = str(e.value)
  assert '\n' not in message and 'skip_bad_images=True' in message
  assert any(message.startswith(f'unreadable image {os.path.join(root, name)}: ') for name in bad)


def _tiny_folder(root, sizes):
  """Two classes of small PNG/JPEG files; sizes: (h, w) of each, in order.
  Returns {relative path: pixels as written (PNG) or None (JPEG)}."""
  written = {}
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate(sizes):
    cls = 'cat' if i % 2 else 'dog'
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    if i % 3:
      name, data, pixels = f'train/{cls}/{i}.png', png_bytes(image), image
    else:
      out = io.BytesIO()
      PIL.Image.fromarray(image).save(out, 'JPEG', quality=95)
      name, data, pixels = f'train/{cls}/{i}.jpg', out.getvalue(), None
    write_bytes(os.path.join(root, name), data)
    written[name] = pixels
  return written


def test_cifar_family_decodes_a_folder_split(tmp_path):
  written = _tiny_folder(tmp_path, [(8, 8)] * 6)
  index = folder.index(str(tmp_path))
  split = cifar.load_folder_split(index, 'train')
  assert split.images.shape == (6, 8, 8, 3) and split.images.dtype == np.uint8
  assert split.labels.dtype == np.int32
  np.testing.assert_array_equal(split.labels, index.labels['train'])
  for name, image, label in zip(index.files['train'], split.images, split.labels):
    assert index.class_names[label] == name.split('/')[1]
    if written[name] is not None:  # PNG: lossless.
      np.testing.assert_array_equal(image, written[name])
  assert len(cifar.load_folder_split(index, 'train[:-2]')) == 4


def test_cifar_family_needs_one_image_size(tmp_path):
  _tiny_folder(tmp_path, [(8, 8)] * 5 + [(9, 8)])
  index = folder.index(str(tmp_path))
  first = index.files['train'][0]
  with pytest.raises(errors.DataError, match=rf'/train/cat/5\.png is 9x8 but {first} is 8x8'):
    cifar.load_folder_split(index, 'train')


SORT_SCRIPT = os.path.join(ROOT, 'scripts', 'sort_imagenet_val.py')
VAL_WNIDS = {1: 'n01751748', 2: 'n09193705', 3: 'n01751748'}


def _sort(*args):
  return subprocess.run(
    [sys.executable, SORT_SCRIPT, *map(str, args)], capture_output=True, text=True, check=False
  )


def _flat_val(tmp_path):
  val = tmp_path / 'val'
  os.makedirs(val)
  for i in VAL_WNIDS:
    (val / f'ILSVRC2012_val_{i:08d}.JPEG').write_bytes(b'')
  return val


def _tree(val):
  return sorted(
    os.path.relpath(os.path.join(p, n), val) for p, _, names in os.walk(val) for n in names
  )


LABEL_FILES = {
  'LOC_val_solution.csv': 'ImageId,PredictionString\n'
  + ''.join(f'ILSVRC2012_val_{i:08d},{w} 1 2 3 4 {w} 5 6 7 8\n' for i, w in VAL_WNIDS.items()),
  'plain.txt': ''.join(f'ILSVRC2012_val_{i:08d}.JPEG {w}\n' for i, w in VAL_WNIDS.items()),
  'validation_labels.txt': ''.join(f'{w}\n' for w in VAL_WNIDS.values()),
}


@pytest.mark.parametrize('labels_name', sorted(LABEL_FILES))
def test_sort_imagenet_val(tmp_path, labels_name):
  val = _flat_val(tmp_path)
  labels = tmp_path / labels_name
  labels.write_text(LABEL_FILES[labels_name])
  before = _tree(val)
  dry = _sort(val, labels, '--dry_run')
  assert dry.returncode == 0
  assert 'would move 3 images' in dry.stdout and 'into 2 class folders' in dry.stdout
  assert _tree(val) == before
  done = _sort(val, labels)
  assert done.returncode == 0, done.stderr
  assert _tree(val) == [
    f'{w}/ILSVRC2012_val_{i:08d}.JPEG' for i, w in sorted(VAL_WNIDS.items(), key=lambda x: x[1])
  ]
  again = _sort(val, labels)
  assert again.returncode == 0 and 'nothing to sort' in again.stdout


def test_sort_imagenet_val_moves_nothing_without_every_label(tmp_path):
  val = _flat_val(tmp_path)
  (val / 'ILSVRC2012_val_00000009.JPEG').write_bytes(b'')
  labels = tmp_path / 'plain.txt'
  labels.write_text(LABEL_FILES['plain.txt'])
  before = _tree(val)
  out = _sort(val, labels)
  assert out.returncode == 1
  assert 'ILSVRC2012_val_00000009.JPEG' in out.stderr and 'nothing was moved' in out.stderr
  assert _tree(val) == before
  labels.write_text('ILSVRC2012_val_00000001.JPEG 123\n')
  out = _sort(val, labels)
  assert out.returncode == 1 and "'123' is not a wnid" in out.stderr


def test_cifar_family_refuses_evaluation_images_of_another_size(tmp_path):
  from resnet_jax import data

  for split, size in (('train', (8, 8)), ('val', (10, 10))):
    for name in ('a', 'b'):
      os.makedirs(tmp_path / split / name, exist_ok=True)
      PIL.Image.new('RGB', size).save(tmp_path / split / name / 'x.png')
  config = config_lib.cifar10()
  config.input.update(dataset='folder', data_dir=str(tmp_path))
  dataset = data.create(config)
  assert dataset.num_examples('train') == 2
  with pytest.raises(errors.DataError, match="'val' images .* are 10x10, its training images 8x8"):
    dataset.num_examples('val')
