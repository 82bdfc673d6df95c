"""Tests of the test protocols: center, 10-crop, multi-scale, ensemble.

Each protocol's scores are checked against a direct per-image computation
(the views built one image at a time, the model run on each unpadded view).
ImageNet protocols run on a fake data source of small JPEGs of several aspect
ratios (landscape, portrait, square), so nothing is downloaded.
"""

import functools
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from resnet_jax import config_lib, data, distributed, evaluation, models, trained_workdir
from resnet_jax.data import imagenet, imagenet_views
from resnet_jax.training import loop

NUM_CLASSES = 5
# (h, w) of the fake images: not square, both orientations, odd sizes.
SIZES = [
  (37, 53),
  (60, 41),
  (48, 48),
  (33, 70),
  (45, 38),
  (52, 59),
  (40, 64),
  (66, 44),
  (39, 39),
  (50, 75),
  (71, 47),
  (36, 36),
  (43, 57),
]


def _jpeg(h, w, seed):
  rng = np.random.default_rng(seed)
  # Smooth content: JPEG keeps it close to what was encoded.
  base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
  image = Image.fromarray(base).resize((w, h), Image.BILINEAR)
  out = io.BytesIO()
  image.save(out, format='JPEG', quality=95)
  return out.getvalue()


FAKE_SOURCE = [
  {'image': _jpeg(h, w, i), 'label': i % NUM_CLASSES} for i, (h, w) in enumerate(SIZES)
]


def _config():
  config = config_lib.imagenet('resnet18')  # Its TFDS metadata only: the source is fake.
  config.input.holdout_validation = False
  config.input.eval_batch_size = 16  # 16 crop-sized views: never divides 13 images.
  config.input.num_workers = 0
  config.eval.resize_size = 40
  config.eval.crop_size = 32
  config.eval.scales = (32, 48)
  return config


@pytest.fixture(scope='module')
def setup():
  config = _config()
  dataset = data.create(config)
  dataset._source = lambda split: FAKE_SOURCE  # pylint: disable=protected-access
  model = models.ResNet(
    stage_sizes=(1, 1, 1, 1),
    block_cls=models.BasicBlock,
    num_filters=4,
    num_classes=NUM_CLASSES,
    shortcut='A',
  )
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  # Non-trivial BN statistics, so that padding would show if it leaked.
  variables['batch_stats'] = jax.tree.map(
    lambda x: x + 0.3 * jax.random.uniform(jax.random.key(1), x.shape), variables['batch_stats']
  )
  norm = {'mean': imagenet.MEAN_RGB, 'std': imagenet.STDDEV_RGB}
  mesh = distributed.make_mesh()
  return config, dataset, model, variables, norm, evaluation.Scorer(model, dataset, mesh)


@functools.cache
def _jitted_scores(model):
  # One compile per view shape, instead of one per operation and shape.
  def scores(variables, norm, views):
    logits = model.apply(variables, data.core.normalize(views, norm), train=False)
    return jax.nn.softmax(logits).mean(0)

  return jax.jit(scores)


def _direct_scores(model, variables, norm, views):
  """Softmax of each unpadded view, averaged: (V, h, w, 3) uint8 -> (C,)."""
  return np.asarray(_jitted_scores(model)(variables, norm, jnp.asarray(views)))


@pytest.mark.parametrize('protocol', ['center', 'ten_crop'])
def test_crop_protocols_score_every_image_once_as_computed_directly(setup, protocol):
  config, dataset, model, variables, norm, scorer = setup
  probs, labels = evaluation.protocol_scores(
    protocol, scorer, variables, norm, dataset, 'validation', config
  )
  assert probs.shape == (len(SIZES), NUM_CLASSES)
  np.testing.assert_array_equal(labels, [ex['label'] for ex in FAKE_SOURCE])
  view = imagenet_views.center_view if protocol == 'center' else imagenet_views.ten_crop_views
  for i, example in enumerate(FAKE_SOURCE):
    image = imagenet_views.decode(example['image'])
    views = view(image, resize_size=40, crop_size=32)
    views = views[None] if views.ndim == 3 else views
    np.testing.assert_allclose(
      probs[i], _direct_scores(model, variables, norm, views), atol=2e-5, err_msg=f'image {i}'
    )


@pytest.mark.slow
def test_multi_scale_equals_the_unpadded_whole_image_computation(setup):
  config, dataset, model, variables, norm, scorer = setup
  probs, _ = evaluation.protocol_scores(
    'multi_scale', scorer, variables, norm, dataset, 'validation', config
  )
  for i, example in enumerate(FAKE_SOURCE):
    image = imagenet_views.decode(example['image'])
    per_scale = []
    for scale in config.eval.scales:
      resized = imagenet_views.resize_shorter(image, scale)
      views = np.stack([resized, resized[:, ::-1]])  # The whole image and its flip.
      per_scale.append(_direct_scores(model, variables, norm, views))
    np.testing.assert_allclose(
      probs[i], np.mean(per_scale, 0), atol=2e-5, err_msg=f'image {i} of {SIZES[i]}'
    )


def test_multi_scale_batches_on_few_canvases(setup):
  config, dataset, _, _, _, _ = setup
  for scale in config.eval.scales:
    groups = dataset.multi_scale_groups('validation', scale, 0, 1)
    assert sum(len(idx) for idx in groups.values()) == len(SIZES)
    assert len(groups) <= 6  # Not one compilation per image shape.


def test_metrics_top1_top5_and_loss():
  probs = np.array(
    [
      [0.5, 0.2, 0.1, 0.1, 0.05, 0.05],
      [0.1, 0.2, 0.3, 0.15, 0.15, 0.1],
      [0.3, 0.25, 0.2, 0.1, 0.1, 0.05],
    ]
  )
  labels = np.array([0, 5, 1])
  out = evaluation.metrics(probs, labels)
  assert out['top1_error'] == pytest.approx(2 / 3)  # Only the first is right.
  assert out['top5_error'] == pytest.approx(1 / 3)  # Class 5 is 6th for the second.
  assert out['loss'] == pytest.approx(-np.mean(np.log([0.5, 0.1, 0.25])))
  assert out['count'] == 3


def test_scores_refuse_examples_scored_the_wrong_number_of_times():
  scores = evaluation.Scores(3, 2)
  scores.add(
    {
      'probs': np.ones((4, 2)),
      'label': np.zeros(4, int),
      'index': np.array([0, 1, 1, -1]),
      'mask': np.array([1, 1, 1, 0]),
    }
  )
  with pytest.raises(AssertionError, match='scored'):
    scores.probabilities(1)


@pytest.mark.slow
def test_ensemble_averages_the_members_scores(tmp_path):
  """Table 5: two workdirs' scores averaged; each member uses its own config."""
  from test_train import tiny_config, tiny_splits  # pylint: disable=import-outside-toplevel

  splits = tiny_splits()
  members = []
  for seed, model in ((0, 'cifar_resnet20'), (1, 'cifar_plain20')):
    config = tiny_config(total_steps=2, boundaries=())
    config.model, config.seed = model, seed
    loop.train_and_evaluate(config, str(tmp_path / model), data=splits)
    members.append(str(tmp_path / model))
  singles = []
  for workdir in members:
    config = tiny_config(total_steps=2, boundaries=())
    config.model = json.load(open(f'{workdir}/config.json'))['model']
    singles.append(evaluation.evaluate_workdir(config, workdir, data=splits))
  config = tiny_config(total_steps=2, boundaries=())
  config.eval.protocol = 'ensemble'
  config.eval.ensemble_protocol = 'center'
  config.eval.ensemble_workdirs = ','.join(members)
  result = evaluation.evaluate_workdir(config, str(tmp_path / 'ensemble'), data=splits)
  assert result['count'] == len(splits[1]['test']) and result['members'] == members
  # The ensemble's scores are the mean of the members' (checked on the loss
  # through the per-example probabilities).
  dataset = data.create(config, preloaded=splits)
  mesh = distributed.make_mesh()
  probs = []
  for workdir in members:
    member_model, variables, norm, _, _, _ = trained_workdir.load_workdir(
      workdir, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    scorer = evaluation.Scorer(member_model, dataset, mesh)
    p, labels = evaluation.protocol_scores(
      'center', scorer, variables, norm, dataset, 'test', config
    )
    probs.append(p)
  expected = evaluation.metrics(np.mean(probs, 0), labels)
  for key in ('top1_error', 'top5_error', 'loss'):
    assert result[key] == pytest.approx(expected[key])
  assert {s['top1_error'] for s in singles} == {
    evaluation.metrics(p, labels)['top1_error'] for p in probs
  }
  saved = json.load(open(tmp_path / 'ensemble' / 'eval.json'))
  assert saved['protocols']['ensemble']['members'] == members
