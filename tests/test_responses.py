"""Tests of the Fig. 7 layer-response statistics (`resnet_jax.research.responses`, `fig7`)."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import data, distributed, errors, models, trained_workdir
from resnet_jax.data import cifar
from resnet_jax.research import activations, fig7, responses
from resnet_jax.training import loop

from helpers import IMAGE, layer_responses, tiny_config, tiny_data, tiny_splits, unscan

NUM_TEST = 37  # Not a multiple of any batch size used below.


def responses_config(model='cifar_resnet20'):
  """Two steps, evaluated and saved at the end."""
  config = tiny_config(model, total_steps=2, boundaries=())
  config.eval_every_steps = config.checkpoint_every_steps = 2
  return config


NORM = {'mean': np.full(IMAGE, 127.5, np.float32), 'std': np.full(3, 64.0, np.float32)}


def randomized(variables, seed=0):
  """Variables with random BN statistics and affine parameters, so that the
  channels differ in mean and scale (the per-channel and overall stds differ)."""
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = jax.tree_util.keystr(path)
    if 'bn' not in name:
      return x
    shape = np.shape(x)
    if name.endswith("['scale']"):
      return jnp.asarray(rng.uniform(0.3, 2.0, shape), jnp.float32)
    if name.endswith("['var']"):
      return jnp.asarray(rng.uniform(0.3, 3.0, shape), jnp.float32)
    return jnp.asarray(rng.normal(0, 0.7, shape), jnp.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(perturb, variables)


@pytest.fixture(scope='module')
def net():
  model = models.create_model('cifar_resnet20')
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + IMAGE), train=False)
  return model, randomized(variables)


def direct_stats(arrays, example_count=NUM_TEST):
  """float64 numpy statistics of whole-split activations (B, ..., C)."""
  out = []
  for a in arrays:
    a = np.asarray(a, np.float64)
    assert a.shape[0] == example_count
    flat = a.reshape(-1, a.shape[-1])
    out.append(
      {
        'std': flat.std(0).mean(),
        'std_all': flat.std(),
        'mean': flat.mean(),
        'mean_abs': np.abs(flat).mean(),
        'channel_std': flat.std(0),
        'channel_mean': flat.mean(0),
        'count': flat.shape[0],
      }
    )
  return out


def whole_split_input(split):
  return data.core.normalize(jnp.asarray(split.images), NORM)


def assert_stats_equal(got: list, want: list, rtol=2e-5):
  """Equal to float32 rounding of the activations (the absolute tolerance
  scales with the layer's magnitude: means near 0 of channels of size ~50)."""
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.count == w['count']
    atol = rtol * w['mean_abs']
    for key in ('std', 'std_all', 'mean', 'mean_abs', 'channel_std', 'channel_mean'):
      np.testing.assert_allclose(
        getattr(g, key), w[key], rtol=rtol, atol=atol, err_msg=f'{g.name} {key}'
      )


def poisoned(batches):
  """Batches whose padding examples hold extreme pixels: they must not count."""
  for batch in batches:
    batch = dict(batch)
    batch['image'] = np.where(batch['mask'][:, None, None, None] > 0, batch['image'], np.uint8(255))
    yield batch


@pytest.mark.slow
def test_streaming_stats_match_whole_split_sharded_and_single_device(net):
  model, variables = net
  split = tiny_splits()[1]['test']
  _, state = model.apply(
    variables, whole_split_input(split), train=False, mutable=['intermediates']
  )
  want = direct_stats(layer_responses(state['intermediates']))
  # 8 devices, batches of 16 (the last holds 5 examples and 11 padding ones),
  # through the dataset's own padded evaluation batches.
  assert jax.device_count() == 8
  dataset = data.create(responses_config(), preloaded=tiny_splits())
  sharded = responses.dataset_stats(
    model, variables, NORM, dataset, 'test', mesh=distributed.make_mesh(), batch_size=16
  )
  assert_stats_equal(list(sharded.values()), want)
  # 1 device, batches of 5 with poisoned padding.
  single = responses.response_stats(
    model,
    variables,
    poisoned(cifar.eval_batches(split, 5)),
    NORM,
    mesh=distributed.make_mesh(jax.devices()[:1]),
    num_examples=NUM_TEST,
  )
  assert_stats_equal(list(single.values()), want)
  assert list(single) == list(sharded)
  # The per-channel float64 sums too.
  layer = sharded['stage2_block1/response2']
  flat = np.asarray(layer_responses(state['intermediates'])[7], np.float64)
  flat = flat.reshape(-1, flat.shape[-1])
  np.testing.assert_allclose(layer.sum, flat.sum(0), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(layer.sum_sq, (flat**2).sum(0), rtol=1e-5)
  np.testing.assert_allclose(layer.sum_abs, np.abs(flat).sum(0), rtol=1e-5)
  # The std of Fig. 7 is not the overall std (channel means differ here).
  assert abs(layer.std - layer.std_all) > 0.05 * layer.std_all


def test_every_example_is_counted_once(net):
  model, variables = net
  split = tiny_data(10, 2)
  mesh = distributed.make_mesh(jax.devices()[:1])
  twice = list(cifar.eval_batches(split, 4)) + list(cifar.eval_batches(split, 4))[:1]
  with pytest.raises(AssertionError, match='counted'):
    responses.response_stats(model, variables, twice, NORM, mesh=mesh, num_examples=10)


def test_names_order_and_scanned_equals_unscanned(net):
  model, variables = net
  names = activations.response_names(model)
  assert len(names) == len(activations.response_names(model)) == 18
  assert names[:4] == [
    'stage1_block1/response1',
    'stage1_block1/response2',
    'stage1_block2/response1',
    'stage1_block2/response2',
  ]
  assert names[6:8] == ['stage2_block1/response1', 'stage2_block1/response2']
  assert names[-1] == 'stage3_block3/response2'
  split = tiny_data(12, 3)
  x = whole_split_input(split)
  _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  named = activations.named_responses(state['intermediates'])
  assert [n for n, _ in named] == names
  for (_, a), b in zip(named, layer_responses(state['intermediates'])):
    np.testing.assert_array_equal(a, b)

  # The same net unscanned: stacked 'stageI_rest' variables split per block.
  flat = models.create_model('cifar_resnet20', scan_blocks=False)

  flat_vars = {k: unscan(v) for k, v in variables.items()}
  _, flat_state = flat.apply(flat_vars, x, train=False, mutable=['intermediates'])
  assert [n for n, _ in activations.named_responses(flat_state['intermediates'])] == names
  mesh = distributed.make_mesh(jax.devices()[:1])
  batches = list(cifar.eval_batches(split, 8))
  scanned = responses.response_stats(model, variables, batches, NORM, mesh=mesh)
  unscanned = responses.response_stats(flat, flat_vars, batches, NORM, mesh=mesh)
  assert list(scanned) == list(unscanned) == names
  for a, b in zip(scanned.values(), unscanned.values()):
    np.testing.assert_allclose(a.channel_std, b.channel_std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.channel_mean, b.channel_mean, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_collect_named_modules_matches_direct_capture(net):
  model, variables = net
  split = tiny_splits()[1]['test']
  x = whole_split_input(split)
  _, state = model.apply(
    variables, x, train=False, mutable=['intermediates'], capture_intermediates=True
  )
  inter = state['intermediates']
  logits = model.apply(variables, x, train=False)
  pattern = r'stage1_block1/conv1|stage2_block3/conv1|output|stage\d_block\d/bn[12]'
  got = responses.collect(
    model,
    variables,
    cifar.eval_batches(split, 16),
    NORM,
    names=pattern,
    mesh=distributed.make_mesh(),
    num_examples=NUM_TEST,
  )
  names = list(got)
  # Network order: a module's outputs in call order, the root last.
  assert names[:3] == ['stage1_block1/conv1', 'stage1_block1/bn1', 'stage1_block1/bn2']
  assert names.index('stage2_block3/conv1') < names.index('stage2_block3/bn1')
  assert names[-1] == 'output'
  want = direct_stats(
    [
      inter['stage1_block1']['conv1']['__call__'][0],
      inter['stage1_block1']['bn1']['__call__'][0],
      inter['stage2_rest']['conv1']['__call__'][0][1],  # block 3 = second scanned block.
      logits,
    ]
  )
  assert_stats_equal(
    [
      got['stage1_block1/conv1'],
      got['stage1_block1/bn1'],
      got['stage2_block3/conv1'],
      got['output'],
    ],
    want,
  )
  # For basic blocks the responses of Fig. 7 are the bn1 / bn2 outputs.
  fig7 = responses.response_stats(
    model, variables, cifar.eval_batches(split, 16), NORM, mesh=distributed.make_mesh()
  )
  bns = [n for n in names if '/bn' in n]
  assert [n.replace('/bn', '/response') for n in bns] == list(fig7)
  for n in bns:
    np.testing.assert_allclose(
      got[n].channel_std, fig7[n.replace('/bn', '/response')].channel_std, rtol=1e-6
    )
  # A callable filter, and a name that matches nothing.
  one = responses.collect(
    model,
    variables,
    cifar.eval_batches(split, 40),
    NORM,
    names=lambda n: n == 'stage3_block2/bn2',
    mesh=distributed.make_mesh(jax.devices()[:1]),
  )
  assert list(one) == ['stage3_block2/bn2']
  np.testing.assert_allclose(
    one['stage3_block2/bn2'].channel_std, got['stage3_block2/bn2'].channel_std, rtol=1e-5
  )
  with pytest.raises(ValueError, match='no activation matched'):
    responses.collect(
      model,
      variables,
      cifar.eval_batches(split, 40),
      NORM,
      names='stage9_block1/bn1',
      mesh=distributed.make_mesh(jax.devices()[:1]),
    )


def test_pixel_mask_counts_only_each_image(net):
  """On a padded canvas only the image's positions count, at every resolution."""
  model, variables = net
  split = tiny_data(4, 4)
  canvas = np.full((4, 12, 12, 3), 255, np.uint8)
  canvas[:, :8, :8] = split.images
  pixel_mask = np.zeros((4, 12, 12), bool)
  pixel_mask[:, :8, :8] = True
  batch = {
    'image': canvas,
    'mask': np.ones(4, np.float32),
    'pixel_mask': pixel_mask,
    'index': np.arange(4, dtype=np.int32),
  }
  mesh = distributed.make_mesh(jax.devices()[:1])
  padded = responses.response_stats(model, variables, [batch], NORM, mesh=mesh, num_examples=4)
  plain = responses.response_stats(model, variables, cifar.eval_batches(split, 4), NORM, mesh=mesh)
  for a, b in zip(padded.values(), plain.values()):
    assert a.count == b.count
    np.testing.assert_allclose(a.channel_std, b.channel_std, rtol=1e-4, atol=1e-5)


def test_streaming_merge_is_precise_over_many_batches():
  """Large offset, small spread, many batches: float64 merge of centred sums."""
  rng = np.random.default_rng(0)
  x = (1000.0 + 0.01 * rng.standard_normal((200, 6, 6, 3)) * np.arange(1, 4)).astype(np.float32)
  stats = responses.ResponseStats()
  moments = jax.jit(responses._channel_moments)
  for chunk in np.array_split(x, 23):
    stats.add({'y': jax.device_get(moments(chunk, np.ones(len(chunk), np.float32)))})
  got = stats.result()['y']
  flat = x.astype(np.float64).reshape(-1, 3)
  # Plain float32 sums of 1000 + noise would be off by ~1e-3 of the std here.
  np.testing.assert_allclose(got.channel_std, flat.std(0), rtol=1e-6)
  np.testing.assert_allclose(got.std_all, flat.std(), rtol=1e-6)
  np.testing.assert_allclose(got.channel_mean, flat.mean(0), rtol=1e-12)
  assert got.count == 200 * 36


@pytest.mark.slow
def test_cli_end_to_end_on_two_trained_workdirs(tmp_path, capsys):
  splits = tiny_splits()
  workdirs = []
  for name in ('cifar_resnet20', 'cifar_plain20'):
    workdir = str(tmp_path / name)
    loop.train_and_evaluate(responses_config(name), workdir, data=splits)
    workdirs.append(workdir)
  out = str(tmp_path / 'fig7.png')
  results = fig7.run(workdirs, out, data=splits)
  assert os.path.getsize(out) > 0
  saved = json.loads((tmp_path / 'fig7.json').read_text())
  assert [r['label'] for r in saved['results']] == ['ResNet-20', 'plain-20']
  for r in saved['results']:
    assert len(r['std']) == len(r['layers']) == len(r['std_sorted']) == 18
    assert r['std_sorted'] == sorted(r['std'], reverse=True)
    assert r['split'] == 'test' and r['num_examples'] == NUM_TEST and r['step'] == 2
    counts = [layer['count'] for layer in r['per_layer']]
    assert counts == [NUM_TEST * 64] * 6 + [NUM_TEST * 16] * 6 + [NUM_TEST * 4] * 6
    assert all(np.isfinite(r['std'])) and min(r['std']) > 0
  assert saved['results'] == json.loads(json.dumps(results))
  table = capsys.readouterr().out
  assert '| ResNet-20 | 18 |' in table and '| plain-20 | 18 |' in table
  # The numbers match a direct computation on the loaded checkpoint.
  model, variables, norm, _, _, _ = trained_workdir.load_workdir(workdirs[0])
  direct = responses.response_stats(
    model,
    variables,
    cifar.eval_batches(splits[1]['test'], 37),
    norm,
    mesh=distributed.make_mesh(jax.devices()[:1]),
  )
  np.testing.assert_allclose(
    saved['results'][0]['std'], [s.std for s in direct.values()], rtol=1e-5
  )
  # --data_dir overrides the workdir config's input (and is checked first).
  with pytest.raises(errors.MissingError, match='does not exist'):
    fig7.run(workdirs[:1], str(tmp_path / 'x.png'), data_dir=str(tmp_path / 'nowhere'))


def _parsed(**given):
  """fig7's flags as absl parses them (its command line defines them only
  when it runs): `given`, None for the others."""
  names = 'workdir out json data_dir dataset split batch_size label beside'.split()
  return types.SimpleNamespace(**{name: given.get(name) for name in names})


def test_flags():
  kwargs = fig7.run_kwargs(
    _parsed(workdir=['a', 'b'], out='f.png', data_dir='/data/tfds', dataset='cifar10_jpeg')
  )
  assert kwargs['workdirs'] == ['a', 'b'] and kwargs['out'] == 'f.png'
  assert kwargs['json_path'] is None and kwargs['data_dir'] == '/data/tfds'
  assert kwargs['dataset'] == 'cifar10_jpeg' and kwargs['beside'] is None
  with pytest.raises(errors.ConfigError, match='--out'):
    fig7.run_kwargs(_parsed(workdir=['a']))
  with pytest.raises(errors.ConfigError, match='one --label per --workdir'):
    fig7.run_kwargs(_parsed(workdir=['a', 'b'], out='f.png', label=['A']))
  assert fig7.model_label('cifar_plain56') == 'plain-56'
  assert fig7.model_label('resnet152') == 'ResNet-152'
  config = fig7.override_input(responses_config(), data_dir='/d', dataset='cifar10_jpeg')
  assert config.input.data_dir == '/d' and config.input.dataset == 'cifar10_jpeg'


def _result(label, step, workdir):
  return {'label': label, 'step': step, 'workdir': workdir, 'std': [1.0, 0.5]}


def test_earlier_results_drawn_beside_and_told_apart(tmp_path):
  earlier = [_result('plain-20', 600, 'w/plain20'), _result('ResNet-20', 600, 'w/resnet20')]
  path = tmp_path / 'earlier.json'
  fig7.write_json(earlier, str(path))
  results = [_result('ResNet-20', 64_000, 'runs/r20')] + fig7.read_json(str(path))
  fig7._distinct_labels(results)
  assert [r['label'] for r in results] == [
    'ResNet-20 (64,000 its.)',
    'plain-20 (600 its.)',
    'ResNet-20 (600 its.)',
  ]
  same_length = [_result('ResNet-20', 600, 'w/a'), _result('ResNet-20', 600, 'w/b')]
  fig7._distinct_labels(same_length)
  assert [r['label'] for r in same_length] == ['ResNet-20 (a)', 'ResNet-20 (b)']
  with pytest.raises(errors.MissingError, match='does not exist'):
    fig7.read_json(str(tmp_path / 'nowhere.json'))
  path.write_text('{"results": [{"label": "x"}]}')
  with pytest.raises(errors.DataError, match='not a Fig. 7 JSON file'):
    fig7.read_json(str(path))
