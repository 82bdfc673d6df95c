"""Any dataset by its own metadata: a TFDS dataset none of the configs name,
written here with TFDS's own writer (no TensorFlow), trained on by name;
then evaluated from its workdir alone, and on a folder of images that holds
some of its classes (labels mapped by class name)."""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from resnet_jax import data, distributed, evaluation, trained_workdir, workdir_files
from resnet_jax.training import loop

from helpers import ROOT, tiny_config

CLASSES = ('dark', 'light', 'red')
SIZE = 16


def _image(label: int, rng) -> np.ndarray:
  image = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
  if label == 1:
    image += 150
  elif label == 2:
    image[..., 0] += 180
  return image


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """A TFDS data directory holding `tiny_shapes` (train 48, test 12)."""
  import tensorflow_datasets as tfds

  class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """Three classes of 16x16 images; raw uint8 tensors (PNG encoding would need TensorFlow)."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            'image': tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=CLASSES),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(48, 0), 'test': self._generate_examples(12, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {'image': _image(i % 3, rng), 'label': i % 3}

  root = str(tmp_path_factory.mktemp('tfds'))
  TinyShapes(data_dir=root, file_format='array_record').download_and_prepare()
  return root


def _config(tfds_dir):
  config = tiny_config(total_steps=4, boundaries=(2,))
  config.input.update(dataset='tiny_shapes', data_dir=tfds_dir)
  config.eval_every_steps = config.checkpoint_every_steps = 2
  return config


@pytest.fixture(scope='module')
def trained(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tiny_shapes_run'))
  result = loop.train_and_evaluate(_config(tfds_dir), workdir)
  return workdir, result


def test_a_tfds_dataset_by_name_gives_classes_splits_and_family(tfds_dir):
  info = data.dataset_info(_config(tfds_dir).input)
  assert info.class_names == CLASSES and info.num_classes == 3
  assert info.splits == {'train': 48, 'test': 12} and info.eval_split == 'test'
  assert info.family == 'cifar' and info.image_shape == (SIZE, SIZE, 3)


def test_it_trains_and_records_its_classes(trained):
  workdir, result = trained
  assert 0 <= result['test_error'] <= 1
  loaded = trained_workdir.load_workdir(workdir)
  assert loaded.class_names == CLASSES and loaded.model.num_classes == 3
  assert loaded.config.model_options.num_classes == 3  # Saved resolved: no dataset needed.


def test_evaluate_from_the_workdir_alone(trained):
  workdir, result = trained
  out = evaluation.evaluate_workdir(workdir_files.read_config(workdir), workdir)
  assert out['count'] == 12 and out['top1_error'] == pytest.approx(result['test_error'])
  # The command line: no --config, an override on the saved one.
  run = subprocess.run(
    [
      sys.executable,
      '-m',
      'resnet_jax.main',
      '--mode=evaluate',
      f'--workdir={workdir}',
      '--config.input.eval_split=test[:6]',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  saved = json.load(open(os.path.join(workdir, 'eval.json')))['protocols']['center']
  assert saved['count'] == 6 and saved['dataset'] == 'tiny_shapes'


def test_evaluate_on_a_folder_of_some_of_its_classes_maps_labels_by_name(
  trained, tfds_dir, tmp_path
):
  import tensorflow_datasets as tfds

  workdir, _ = trained
  test = tfds.data_source('tiny_shapes', split='test', data_dir=tfds_dir)
  root = tmp_path / 'folder'
  for i in range(len(test)):
    name = CLASSES[int(test[i]['label'])]
    if name == 'dark':
      continue  # The folder holds two of the three classes: its labels 0, 1 are the model's 1, 2.
    for split in ('train', 'val'):
      os.makedirs(root / split / name, exist_ok=True)
      PIL.Image.fromarray(test[i]['image']).save(root / split / name / f'{i}.png')  # Lossless.

  config = workdir_files.read_config(workdir)
  reference = evaluation.protocol_scores('center', *_scorer_args(config, workdir), 'test', config)
  probs, labels = reference
  keep = labels != 0
  expected = evaluation.metrics(probs[keep], labels[keep])

  config.input.update(dataset='folder', data_dir=str(root), eval_split='val')
  out = evaluation.evaluate_workdir(config, workdir)
  assert out['count'] == int(keep.sum()) == 8
  assert out['top1_error'] == pytest.approx(expected['top1_error'])
  assert out['loss'] == pytest.approx(expected['loss'], rel=1e-5)
  saved = json.load(open(os.path.join(workdir, 'eval.json')))['protocols']
  assert saved['center:folder']['dataset'] == 'folder'


def _scorer_args(config, workdir):
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = distributed.make_mesh()
  loaded = trained_workdir.load_workdir(workdir, sharding=NamedSharding(mesh, P()))
  dataset = data.create(config)
  scorer = evaluation.Scorer(loaded.model, dataset, mesh)
  return scorer, loaded.variables, loaded.norm, dataset


def test_a_folder_of_other_classes_is_refused(trained, tmp_path):
  workdir, _ = trained
  for split in ('train', 'val'):
    os.makedirs(tmp_path / split / 'zebra', exist_ok=True)
    PIL.Image.new('RGB', (SIZE, SIZE)).save(tmp_path / split / 'zebra' / 'a.png')
  config = workdir_files.read_config(workdir)
  config.input.update(dataset='folder', data_dir=str(tmp_path), eval_split='val')
  with pytest.raises(Exception, match="does not predict, e.g. 'zebra'"):
    evaluation.evaluate_workdir(config, workdir)
