"""Bad input to image folders (`data.folder`) and to prediction: each is read
correctly or refused in one line that names the file and the fix, before any
compile and without hanging.

Folders are built in tmp_path from tiny Pillow-made PNGs; the predictor is a
stand-in net (its views need no weights).
"""

import os
import subprocess
import sys
import types

import numpy as np
import PIL.Image
import pytest

from resnet_jax import config_lib, data, errors, predict, prediction
from resnet_jax.data import folder, imagenet_views

from helpers import ROOT, png_bytes, write_bytes

MID_GREY_16 = 128 * 257  # 16-bit mid-grey: 128 in 8 bits.


def _folder(root, classes=('c0', 'c1'), per_class=6, splits=('train',)) -> str:
  """ROOT/<split>/<class>/<i>.png, 8x8 images."""
  for split in splits:
    for c in classes:
      for i in range(per_class):
        write_bytes(
          os.path.join(root, split, c, f'{i}.png'), png_bytes(np.full((8, 8, 3), i, np.uint8))
        )
  return str(root)


@pytest.fixture(scope='module')
def predictor():
  """A Predictor of the ImageNet family on 16x16 views; `view` never runs the net."""
  config = config_lib.imagenette('resnet18')
  config.eval.update(resize_size=16, crop_size=16)
  norm = {'mean': np.zeros(3, np.float32), 'std': np.ones(3, np.float32)}
  loaded = types.SimpleNamespace(
    model=types.SimpleNamespace(num_classes=2),
    config=config,
    step=0,
    class_names=None,
    variables={},
    norm=norm,
  )
  return prediction.Predictor(loaded, batch_size=8)


def test_special_files_are_refused_at_indexing_never_opened(tmp_path):
  root = _folder(tmp_path / 'images')
  pipe = os.path.join(root, 'train', 'c0', 'pipe.jpg')
  os.mkfifo(pipe)  # Opening it would block for ever.
  for skip_bad in (False, True):
    with pytest.raises(errors.DataError, match='not a regular file') as e:
      folder.index(root, skip_bad)
    assert pipe in str(e.value) and 'remove it' in str(e.value)
  with pytest.raises(errors.DataError, match='not a regular file'):
    predict.image_files([os.path.join(root, 'train')])
  with pytest.raises(errors.DataError, match='not a regular file'):
    predict.image_files([pipe])


@pytest.mark.parametrize('decoder', list(imagenet_views.DECODERS))
def test_16_bit_greyscale_is_scaled_to_8_bits(monkeypatch, decoder):
  monkeypatch.setattr(imagenet_views, 'DECODER', decoder)
  wide = np.array([[0, 257, MID_GREY_16, 65535]], np.uint16)
  image = PIL.Image.fromarray(wide)
  assert image.mode.startswith('I')
  decoded = imagenet_views.decode(png_bytes(wide))
  assert decoded.shape == (1, 4, 3) and decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded[..., 0], [[0, 1, 128, 255]])
  np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])


def test_16_bit_greyscale_predicts_as_its_8_bit_twin(predictor):
  wide = png_bytes(np.full((20, 20), MID_GREY_16, np.uint16))
  narrow = png_bytes(np.full((20, 20), 128, np.uint8))
  np.testing.assert_array_equal(predictor.view(wide), predictor.view(narrow))
  assert (predictor.view(wide) == 128).all()


def test_a_symlink_loop_is_walked_once_and_links_elsewhere_are_followed(tmp_path):
  root = _folder(tmp_path / 'images')
  os.symlink('.', os.path.join(root, 'train', 'c0', 'self'))
  os.symlink('..', os.path.join(root, 'train', 'c1', 'parent'))
  outside = _folder(tmp_path / 'outside', classes=('more',), per_class=2)
  os.symlink(os.path.join(outside, 'train', 'more'), os.path.join(root, 'train', 'c1', 'more'))
  index = folder.index(root)
  files = index.files['train']
  assert sum(f.startswith('train/c0/') for f in files) == 6
  assert len({os.path.realpath(os.path.join(root, f)) for f in files}) == len(files)
  assert 'train/c1/more/0.png' in files and len(files) == 6 + 6 + 2


def test_file_names_that_are_not_utf8_are_indexed_and_read(tmp_path):
  root = _folder(tmp_path / 'images')
  raw = os.path.join(os.fsencode(root), b'train', b'c1', b'caf\xe9.png')
  with open(raw, 'wb') as f:
    f.write(png_bytes(np.zeros((8, 8, 3), np.uint8)))
  index = folder.index(root)
  name = os.path.join('train', 'c1', os.fsdecode(b'caf\xe9.png'))
  assert name in index.files['train'] and index.num_examples('train') == 13
  source = index.source('train')
  example = source[index.files['train'].index(name)]
  assert example['file_name'] == b'train/c1/caf\xe9.png' and example['label'] == 1
  assert folder.index(root, skip_bad=True).skipped == ()


def test_images_over_pillows_pixel_limit_are_named_as_such(tmp_path, monkeypatch, predictor):
  root = _folder(tmp_path / 'images')
  big = os.path.join(root, 'train', 'c0', 'big.png')
  write_bytes(big, png_bytes(np.zeros((20, 20, 3), np.uint8)))
  monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 100)  # Refused over 200 pixels.

  def check(message):
    assert big in message and 'MAX_IMAGE_PIXELS' in message and '200' in message, message
    assert 'header' not in message and '\n' not in message
    assert imagenet_views.MAX_PIXELS_VARIABLE in message

  with pytest.raises(errors.DataError) as e:
    folder.index(root, skip_bad=True)  # A whole image: not to be skipped as unreadable.
  check(str(e.value))
  index = folder.index(root)
  with pytest.raises(errors.DataError) as e:
    index.source('train')[index.files['train'].index('train/c0/big.png')]
  check(str(e.value))
  with pytest.raises(errors.DataError) as e:
    predictor.view(big)
  check(str(e.value))


def _folder_config(root, **inp):
  config = config_lib.imagenette('resnet18')
  config.input.update(dataset='folder', data_dir=root, num_holdout=3, **inp)
  return config


def test_no_val_folder_says_so_and_names_fixes_that_work(tmp_path):
  root = _folder(tmp_path / 'images')
  with pytest.raises(errors.ConfigError) as e:
    data.create(_folder_config(root)).check_splits()
  message = str(e.value)
  assert f'{root} has no val/ folder' in message, message
  assert "--config.input.eval_split='train[-" in message, message
  assert "--config.input.train_split='train[:-" in message, message
  fixed = _folder_config(
    root, holdout_validation=False, train_split='train[:-3]', eval_split='train[-3:]'
  )
  data.create(fixed).check_splits()
  data.create(_folder_config(root, eval_split='train[-3:]')).check_splits()  # With holdout.


def test_an_empty_val_folder_says_to_remove_it(tmp_path):
  root = _folder(tmp_path / 'images')
  os.makedirs(os.path.join(root, 'val'))
  with pytest.raises(errors.DataError, match='holds no class folders') as e:
    folder.index(root)
  assert 'remove the empty' in str(e.value) and os.path.join(root, 'val') in str(e.value)


def test_predict_folders_take_the_datasets_files(tmp_path):
  top = tmp_path / 'photos'
  for name in ('a.JPG', 'sub/b.png', '._a.JPG', '.hidden/c.png', 'sub/._b.png', 'notes.txt'):
    write_bytes(os.path.join(top, name), b'')
  assert predict.image_files([str(top)]) == [str(top / 'a.JPG'), str(top / 'sub' / 'b.png')]


def test_predict_names_an_unreadable_image_by_its_path(tmp_path, predictor):
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'not an image at all')
  with pytest.raises(errors.DataError) as e:
    predictor.view(str(bad))
  assert str(bad) in str(e.value) and 'BytesIO' not in str(e.value), str(e.value)


def test_predict_checks_the_output_folder_before_any_work(tmp_path):
  image = tmp_path / 'a.png'
  image.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
  output = tmp_path / 'missing' / 'p.json'
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'resnet_jax.predict',
      f'--workdir={tmp_path / "no_workdir"}',
      str(image),
      f'--output={output}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert result.returncode == 1 and result.stdout == ''
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-3000:]
  assert str(output.parent) in lines[0] and 'does not exist' in lines[0], lines[0]
  assert sorted(os.listdir(tmp_path)) == ['a.png']


def test_the_pixel_limit_is_raised_from_the_environment(monkeypatch):
  monkeypatch.setattr(PIL.Image, 'MAX_IMAGE_PIXELS', 100)
  imagenet_views.set_pixel_limit({imagenet_views.MAX_PIXELS_VARIABLE: '5000'})
  assert PIL.Image.MAX_IMAGE_PIXELS == 5000
  imagenet_views.set_pixel_limit({imagenet_views.MAX_PIXELS_VARIABLE: 'none'})
  assert PIL.Image.MAX_IMAGE_PIXELS is None
