"""Tests of prediction: `Predictor`'s scores are the evaluation's center-protocol
scores of the same images, and the command line prints and writes them.

CIFAR family: a tiny workdir and the toy images. ImageNet family: a
ResNet-18 of synthetic torchvision weights on real imagenette224 JPEGs, skipped
when the dataset is absent.
"""

import csv
import io
import json
import os
import subprocess
import sys

import cv2
import jax
import numpy as np
import PIL.Image
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import (
  data,
  distributed,
  errors,
  evaluation,
  experiment,
  models,
  predict,
  prediction,
  trained_workdir,
)
from resnet_jax.data import cifar, imagenet, imagenet_views
from resnet_jax.weights import torchvision as tw

import helpers

CIFAR_NAMES = tuple(f'class{i}' for i in range(10))
NUM_EVAL = 4  # imagenette224 validation images predicted and evaluated.


def _encode(image, fmt) -> bytes:
  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, fmt)
  return out.getvalue()


def _center_scores(workdir, dataset, split, config):
  """The evaluation path: `protocol_scores('center', ...)` of the workdir's net."""
  mesh = distributed.make_mesh()
  loaded = trained_workdir.load_workdir(workdir, sharding=NamedSharding(mesh, P()))
  scorer = evaluation.Scorer(loaded.model, dataset, mesh)
  return evaluation.protocol_scores(
    'center', scorer, loaded.variables, loaded.norm, dataset, split, config
  )[0]


@pytest.fixture(scope='module')
def cifar_run(tmp_path_factory):
  """A workdir of a tiny CIFAR net (as training saves one, without training it:
  non-trivial BN statistics and the toy images' per-pixel mean)."""
  config = helpers.tiny_config()
  train, evals = splits = helpers.tiny_splits()
  model = experiment.model_from_config(config)
  params, batch_stats = models.init_variables(model, helpers.IMAGE, jax.random.key(0))
  batch_stats = jax.tree.map(
    lambda x: x + 0.3 * jax.random.uniform(jax.random.key(1), x.shape), batch_stats
  )
  norm = {'mean': cifar.mean_image(train), 'std': np.full(3, 64.0, np.float32)}
  state = {'params': params, 'batch_stats': batch_stats, 'norm': norm, 'step': np.int32(0)}
  workdir = str(tmp_path_factory.mktemp('cifar') / 'run')
  trained_workdir.save_for_inference(workdir, config, state, class_names=CIFAR_NAMES)
  expected = _center_scores(workdir, data.create(config, preloaded=splits), 'test', config)
  return config, workdir, evals['test'].images, expected


@pytest.fixture(scope='module')
def cifar_predictor(cifar_run):
  return prediction.Predictor.from_workdir(cifar_run[1], batch_size=5)


def test_cifar_scores_are_the_evaluations_with_padded_batches(cifar_run, cifar_predictor):
  config, workdir, images, expected = cifar_run
  assert len(images) == 37 and cifar_predictor.batch_size == 8  # 5 rounded up to the 8 devices.
  large = prediction.Predictor.from_workdir(workdir, batch_size=64)  # One padded batch.
  for predictor in (cifar_predictor, large):
    logits = predictor.predict(images)
    assert logits.shape == (37, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits)), expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(predictor.probabilities(images), expected, rtol=1e-6, atol=1e-8)
  # A list of images of the training size gives the same as the batch array.
  np.testing.assert_allclose(
    cifar_predictor.predict(list(images[:9])), cifar_predictor.predict(images[:9]), rtol=1e-6
  )
  assert cifar_predictor.predict([]).shape == (0, 10)


def test_cifar_classify_names_the_checkpoints_classes(cifar_run, cifar_predictor):
  config, _, images, expected = cifar_run
  names = CIFAR_NAMES
  assert cifar_predictor.class_names == names  # The checkpoint's.
  results = cifar_predictor.classify(images[:3], top_k=3)
  assert [r['index'] for r in results] == [0, 1, 2]
  for result, p in zip(results, expected):
    labels = [c['label'] for c in result['top_k']]
    assert labels == list(np.argsort(-p, kind='stable')[:3])
    assert [c['name'] for c in result['top_k']] == [names[c] for c in labels]
    np.testing.assert_allclose([c['probability'] for c in result['top_k']], p[labels], rtol=1e-5)
  assert len(cifar_predictor.classify(images[:1], top_k=50)[0]['top_k']) == 10


def test_cifar_views_resize_to_the_training_size_and_make_rgb(cifar_predictor):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  assert cifar_predictor.view_shape == (8, 8, 3)
  np.testing.assert_array_equal(cifar_predictor.view(image), image)
  np.testing.assert_array_equal(cifar_predictor.view(_encode(image, 'PNG')), image)
  large = rng.integers(0, 256, (20, 14, 3), dtype=np.uint8)
  np.testing.assert_array_equal(
    cifar_predictor.view(large), cv2.resize(large, (8, 8), interpolation=cv2.INTER_AREA)
  )
  grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
  rgb = np.repeat(grey[..., None], 3, -1)
  np.testing.assert_array_equal(cifar_predictor.view(grey), rgb)
  np.testing.assert_array_equal(cifar_predictor.view(_encode(grey, 'PNG')), rgb)
  rgba = np.concatenate([image, np.full((8, 8, 1), 7, np.uint8)], -1)
  np.testing.assert_array_equal(cifar_predictor.view(rgba), image)


def test_unreadable_or_missing_files_are_one_line_errors(cifar_predictor, tmp_path):
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'not an image at all')
  with pytest.raises(errors.DataError, match='bad.jpg is not a readable image') as e:
    cifar_predictor.predict([str(bad)])
  assert '\n' not in str(e.value)
  with pytest.raises(errors.MissingError, match='gone.png: no such image file'):
    cifar_predictor.classify([str(tmp_path / 'gone.png')])
  with pytest.raises(errors.DataError, match='float'):
    cifar_predictor.view(np.zeros((8, 8, 3), np.float32))


@pytest.fixture(scope='module')
def imagenet_run(tmp_path_factory):
  if not helpers.has_dataset('imagenette224'):
    pytest.skip(f'imagenette224 not found under {helpers.DATA_DIR}')
  root = tmp_path_factory.mktemp('imagenet')
  _, variables = tw.from_torchvision(helpers.synthetic_state_dict('resnet18', num_classes=10))
  workdir = str(root / 'run')
  config = tw.write_workdir('resnet18', variables, workdir)
  # The evaluation of the same net on the first validation images.
  config.input.dataset = 'imagenette224'
  config.input.data_dir = helpers.DATA_DIR
  config.input.eval_split = f'validation[:{NUM_EVAL}]'
  config.input.eval_batch_size = 8  # One image per device.
  config.input.num_workers = 0
  dataset = data.create(config)
  expected = _center_scores(workdir, dataset, 'validation', config)
  source = imagenet.open_source('imagenette224', config.input.eval_split, helpers.DATA_DIR)
  files = []
  for i in range(NUM_EVAL):
    path = root / f'val{i}.JPEG'
    path.write_bytes(source[i]['image'])
    files.append(str(path))
  predictor = prediction.Predictor.from_workdir(workdir, batch_size=8)
  return predictor, files, expected


def test_imagenet_files_score_as_the_evaluation_center_view(imagenet_run):
  predictor, files, expected = imagenet_run
  assert predictor.class_names == tuple(map(str, range(10)))  # No names in an import.
  results = predictor.classify(files, top_k=10)
  assert [r['file'] for r in results] == files
  for result, p in zip(results, expected):
    assert result['top_k'][0]['label'] == int(np.argmax(p))
    by_label = np.array(
      [c['probability'] for c in sorted(result['top_k'], key=lambda c: c['label'])]
    )
    np.testing.assert_allclose(by_label, p, rtol=1e-6, atol=1e-8)


def test_imagenet_arrays_of_any_size_in_one_call(imagenet_run):
  predictor, files, _ = imagenet_run
  decoded = [imagenet_views.decode(open(f, 'rb').read()) for f in files]
  # imagenette224 images are decoded at full size (the DCT scale would leave
  # their 224-pixel side short of 256), so array and file views agree exactly.
  for image, path in zip(decoded, files):
    np.testing.assert_array_equal(predictor.view(image), predictor.view(path))
  arrays = [decoded[0], cv2.resize(decoded[1], (300, 260)), decoded[2][:180, :230], decoded[3]]
  logits = predictor.predict(arrays)
  assert logits.shape == (4, 10) and np.isfinite(logits).all()
  np.testing.assert_allclose(logits[[0, 3]], predictor.predict([files[0], files[3]]), rtol=1e-5)
  for image in arrays[1:3]:
    assert predictor.view(image).shape == (224, 224, 3)


def test_imagenet_views_of_greyscale_and_png(imagenet_run, tmp_path):
  predictor, _, _ = imagenet_run
  rng = np.random.default_rng(0)
  image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (400, 300))
  png = tmp_path / 'image.png'
  png.write_bytes(_encode(image, 'PNG'))
  # PNG is lossless and has no reduced-scale decode: the file's view is the array's.
  np.testing.assert_array_equal(predictor.view(str(png)), predictor.view(image))
  grey = image[..., 0]
  view = predictor.view(_encode(grey, 'JPEG'))
  assert view.shape == (224, 224, 3)
  assert (view[..., 0] == view[..., 1]).all() and (view[..., 1] == view[..., 2]).all()
  np.testing.assert_array_equal(
    predictor.view(_encode(grey, 'PNG')), predictor.view(np.repeat(grey[..., None], 3, -1))
  )


def _predict_cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'resnet_jax.predict', *args],
    cwd=helpers.ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )


def test_command_line_prints_and_writes_predictions(cifar_run, cifar_predictor, tmp_path):
  _, workdir, images, _ = cifar_run
  folder = tmp_path / 'folder'
  (folder / 'sub').mkdir(parents=True)
  explicit = [tmp_path / 'a.png', tmp_path / 'b.jpg']
  in_folder = [folder / 'c.PNG', folder / 'sub' / 'd.jpeg']
  for i, path in enumerate(explicit + in_folder):
    path.write_bytes(_encode(images[i], 'PNG' if path.suffix.lower() == '.png' else 'JPEG'))
  (folder / 'notes.txt').write_text('not an image')
  files = [str(p) for p in explicit + in_folder]
  expected = cifar_predictor.classify(files, top_k=3)
  args = [f'--workdir={workdir}', *files[:2], str(folder), '--top_k=3', '--batch_size=8']

  result = _predict_cli(*args, f'--output={tmp_path / "x.json"}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr == ''  # Orbax's log lines are not shown.
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 4
  for line, want in zip(lines, expected):
    path, _, classes = line.partition(': ')
    assert path == want['file']
    shown = [c.rsplit(' (', 1) for c in classes.split(', ')]
    assert [name for name, _ in shown] == [c['name'] for c in want['top_k']]
    assert [float(p.rstrip(')')) for _, p in shown] == pytest.approx(
      [c['probability'] for c in want['top_k']], abs=1e-3
    )
  written = json.loads((tmp_path / 'x.json').read_text())
  assert [r['file'] for r in written] == files
  assert [[c['label'] for c in r['top_k']] for r in written] == [
    [c['label'] for c in r['top_k']] for r in expected
  ]

  # The CSV form of the same results (a second run would only add a restore).
  predict.write_output(str(tmp_path / 'x.csv'), written)
  rows = list(csv.DictReader(open(tmp_path / 'x.csv')))
  assert list(rows[0]) == ['file', 'rank', 'label', 'name', 'probability']
  assert len(rows) == 4 * 3
  for row in rows:
    want = expected[files.index(row['file'])]['top_k'][int(row['rank']) - 1]
    assert int(row['label']) == want['label'] and row['name'] == want['name']
    assert float(row['probability']) == pytest.approx(want['probability'], rel=1e-5)


@pytest.mark.parametrize(
  'extra, message',
  [
    pytest.param(['{tmp}/missing.jpg'], 'missing.jpg: no such file or folder', id='missing'),
    pytest.param(['{tmp}/empty'], 'no image files', id='no_images'),
    pytest.param(['{tmp}/a.png', '--output={tmp}/x.txt'], 'unknown format', id='suffix'),
    pytest.param(['{tmp}/a.png', '--workdir={tmp}/untrained'], 'no checkpoint in', id='workdir'),
  ],
)
def test_command_line_bad_input_is_one_error_line(cifar_run, tmp_path, extra, message):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'a.png').write_bytes(_encode(np.zeros((8, 8, 3), np.uint8), 'PNG'))
  args = [a.format(tmp=tmp_path) for a in extra]
  if not any(a.startswith('--workdir=') for a in args):
    args.insert(0, f'--workdir={cifar_run[1]}')
  result = _predict_cli(*args)
  assert result.returncode == 1
  assert result.stdout == ''
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines
