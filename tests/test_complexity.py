"""Parameter, multiply-add and depth counts against the paper and closed forms.

Everything here is shape-only (`jax.eval_shape` / `jax.make_jaxpr` inside the
counters), so no model is compiled or run.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from resnet_jax import models
from resnet_jax.models import complexity

# Exact option-B parameter counts, 1000 classes (torchvision).
TORCHVISION_PARAMS = {
  'resnet18': 11_689_512,
  'resnet34': 21_797_672,
  'resnet50': 25_557_032,
  'resnet101': 44_549_160,
  'resnet152': 60_192_808,
}
# Table 6, in millions, as printed (the number of decimals is the precision).
TABLE6_PARAMS = {
  'cifar_resnet20': '0.27',
  'cifar_resnet32': '0.46',
  'cifar_resnet44': '0.66',
  'cifar_resnet56': '0.85',
  'cifar_resnet110': '1.7',
  'cifar_resnet1202': '19.4',
}
# Table 1, multiply-adds in billions at 224x224.
TABLE1_MULT_ADDS = {
  'resnet18': '1.8',
  'resnet34': '3.6',
  'resnet50': '3.8',
  'resnet101': '7.6',
  'resnet152': '11.3',
}
CIFAR_NAMES = sorted(n for n in models.MODELS if n.startswith('cifar_'))


def _size(name):
  return 32 if name.startswith('cifar_') else 224


# The counters, memoised: a count costs a trace, and several tests (and the CLI
# test, through monkeypatch) need the same ones. Models are frozen dataclasses,
# equal and hashable by value.
_COUNTERS = {
  f.__name__: f
  for f in (complexity.count_params, complexity.count_mult_adds, complexity.count_layers)
}


@functools.cache
def _count(counter_name, model, size):
  return _COUNTERS[counter_name](model, size)


def _params(name, size=None, **options):
  return _count('count_params', models.create_model(name, **options), size or _size(name))


def _mult_adds(name, size=None, **options):
  return _count('count_mult_adds', models.create_model(name, **options), size or _size(name))


def _layers(name, size=None, **options):
  return _count('count_layers', models.create_model(name, **options), size or _size(name))


def _depth(name):
  return int(re.search(r'\d+$', name).group())


def _closed_form_mult_adds(name, size, shortcut=None, downsample_on_3x3=False):
  """Conv + fc multiply-adds of a zoo model, written out layer by layer.

  Independent of the model code: only the architecture of the paper (Table 1,
  section 4.2) and 'SAME' padding (output side ceil(h / stride)).
  """
  cfg = models.MODELS[name]
  bottleneck = cfg['block_cls'] is models.BottleneckBlock
  shortcut = shortcut or cfg['shortcut']
  base = cfg['num_filters']

  def out(h, s):
    return -(-h // s)

  if cfg['stem'] == 'imagenet':
    h = out(size, 2)
    total = h * h * 7 * 7 * 3 * base
    h = out(h, 2)  # 3x3/2 max pool.
  else:
    h = size
    total = h * h * 3 * 3 * 3 * base
  c = base
  for i, num_blocks in enumerate(cfg['stage_sizes']):
    f = base * 2**i
    c_out = 4 * f if bottleneck else f
    for j in range(num_blocks):
      s = 2 if i > 0 and j == 0 else 1
      h_out = out(h, s)
      if bottleneck:
        h1 = h if downsample_on_3x3 else h_out  # Where the stride sits.
        total += h1 * h1 * c * f  # 1x1 reduce.
        total += h_out * h_out * 9 * f * f  # 3x3.
        total += h_out * h_out * f * c_out  # 1x1 expand.
      else:
        total += h_out * h_out * 9 * c * f + h_out * h_out * 9 * f * f
      changes = s != 1 or c != c_out
      if not cfg['plain'] and (shortcut == 'C' or (shortcut == 'B' and changes)):
        total += h_out * h_out * c * c_out  # 1x1 projection.
      h, c = h_out, c_out
  return total + c * cfg['num_classes']


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS))
def test_imagenet_params_match_torchvision(name):
  assert _params(name) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize('name', sorted(TABLE6_PARAMS))
def test_cifar_params_round_to_table6(name):
  printed = TABLE6_PARAMS[name]
  decimals = len(printed.split('.')[1])
  assert f'{_params(name) / 1e6:.{decimals}f}' == printed


@pytest.mark.parametrize('name', sorted(complexity.PAPER_PARAMS))
def test_complexity_cli_paper_params_describe_the_models(name):
  """The CLI prints `complexity.PAPER_PARAMS` beside our counts: each must
  be the model's own count, exactly (torchvision) or to Table 6's precision."""
  paper = complexity.PAPER_PARAMS[name]
  if name in TORCHVISION_PARAMS:
    assert _params(name) == paper
  else:
    decimals = len(TABLE6_PARAMS[name].split('.')[1])
    assert f'{_params(name) / 1e6:.{decimals}f}' == f'{paper / 1e6:.{decimals}f}'


@pytest.mark.parametrize('name', sorted(complexity.PAPER_MULT_ADDS))
def test_complexity_cli_paper_mult_adds_describe_the_models(name):
  """Likewise `complexity.PAPER_MULT_ADDS`, within Table 1's 2% rounding
  (see test_mult_adds_near_table1); plain nets count as option A."""
  options = {'shortcut': 'A'} if name.startswith('resnet34') else {}
  assert _mult_adds(name, **options) == pytest.approx(complexity.PAPER_MULT_ADDS[name], rel=0.02)


@pytest.mark.parametrize(
  'plain,residual',
  [
    ('plain18', 'resnet18'),
    ('plain34', 'resnet34'),
  ]
  + [(f'cifar_plain{d}', f'cifar_resnet{d}') for d in (20, 32, 44, 56, 110)],
)
def test_plain_params_equal_option_a(plain, residual):
  # Option A shortcuts are parameter-free, so the two nets differ only in wiring.
  assert _params(plain) == _params(residual, shortcut='A')


def test_resnet34_params_by_shortcut_option():
  a, b, c = (_params('resnet34', shortcut=o) for o in 'ABC')
  assert c > b > a
  assert b == TORCHVISION_PARAMS['resnet34']

  def projection(c_in, c_out):  # 1x1 conv kernel + BN scale and bias.
    return c_in * c_out + 2 * c_out

  # B adds a projection at the first block of stages 2-4.
  assert b - a == projection(64, 128) + projection(128, 256) + projection(256, 512)
  # C also projects every other shortcut (3, 3, 5, 2 identity blocks).
  assert c - b == (
    3 * projection(64, 64)
    + 3 * projection(128, 128)
    + 5 * projection(256, 256)
    + 2 * projection(512, 512)
  )


@pytest.mark.parametrize(
  'name,size,options',
  [
    ('resnet18', 224, {}),
    ('resnet34', 224, {}),
    ('resnet34', 224, {'shortcut': 'A'}),
    ('resnet34', 224, {'shortcut': 'C'}),
    ('plain34', 224, {}),
    ('resnet50', 224, {}),
    ('resnet50', 224, {'downsample_on_3x3': True}),
    ('resnet50', 64, {}),
    ('resnet101', 224, {}),
    ('resnet152', 224, {}),
    ('cifar_resnet20', 32, {}),
    ('cifar_resnet110', 32, {'shortcut': 'B'}),
  ],
)
def test_mult_adds_closed_form(name, size, options):
  assert _mult_adds(name, size, **options) == _closed_form_mult_adds(name, size, **options)


@pytest.mark.parametrize('name', ['resnet18', 'resnet101', 'resnet152'])
def test_mult_adds_round_to_table1(name):
  assert f'{_mult_adds(name) / 1e9:.1f}' == TABLE1_MULT_ADDS[name]


def test_mult_adds_34_layer_matches_table1():
  # The paper: ResNet-34 with option A has the FLOPs of plain-34. Table 1's
  # 3.6e9 rounds that count; option B's three projections add ~0.02e9.
  assert _mult_adds('resnet34', shortcut='A') == _mult_adds('plain34')
  assert f'{_mult_adds("plain34") / 1e9:.1f}' == TABLE1_MULT_ADDS['resnet34']
  assert _mult_adds('resnet34') > _mult_adds('resnet34', shortcut='A')


@pytest.mark.parametrize('name', sorted(TABLE1_MULT_ADDS))
def test_mult_adds_near_table1(name):
  # Table 1 does not round the exact counts consistently: ResNet-50 (stride
  # on the first 1x1, as the paper's models) is 3.86e9 against the printed
  # 3.8e9, ResNet-34 (option B) 3.66e9 against 3.6e9. All within 2%.
  paper = float(TABLE1_MULT_ADDS[name]) * 1e9
  assert _mult_adds(name) == pytest.approx(paper, rel=0.02)


def test_resnet50_v1_5_mult_adds():
  v1_5 = _mult_adds('resnet50', downsample_on_3x3=True)
  assert f'{v1_5 / 1e9:.1f}' == '4.1'
  assert v1_5 > _mult_adds('resnet50')
  # Moving the stride does not change any weight shape.
  assert _params('resnet50', downsample_on_3x3=True) == _params('resnet50')


@pytest.mark.parametrize('name,size', [('cifar_resnet20', 32), ('resnet50', 64)])
def test_counts_do_not_depend_on_scan(name, size):
  for count in (_params, _mult_adds, _layers):
    assert count(name, size, scan_blocks=True) == count(name, size, scan_blocks=False), (
      count.__name__
    )
  # Both agree with the layer-by-layer count (the scan's trip count is used).
  assert _mult_adds(name, size) == _closed_form_mult_adds(name, size)


@pytest.mark.parametrize(
  'name', ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'plain18', 'plain34']
)
def test_count_layers_imagenet(name):
  assert _layers(name) == _depth(name)


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_count_layers_ignores_projections(name):
  # Projection shortcuts are not layers in the paper's naming.
  assert _layers(name, shortcut='C') == _depth(name)


@pytest.mark.parametrize('name', CIFAR_NAMES)
def test_count_layers_cifar(name):
  n = models.MODELS[name]['stage_sizes'][0]
  assert models.MODELS[name]['stage_sizes'] == (n, n, n)
  assert _layers(name) == 6 * n + 2 == _depth(name)


class _OneConv(nn.Module):
  """A rectangular, strided, unpadded conv (with bias)."""

  @nn.compact
  def __call__(self, x, train):
    del train
    return nn.Conv(8, (5, 3), strides=(2, 1), padding='VALID')(x)


class _GroupedConv(nn.Module):
  """A 1x1 conv to 6 channels, then a 3x3 conv in 2 feature groups."""

  @nn.compact
  def __call__(self, x, train):
    del train
    x = nn.Conv(6, (1, 1))(x)
    return nn.Conv(4, (3, 3), feature_group_count=2)(x)


class _OneDense(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    del train
    return nn.Dense(7)(x.reshape((x.shape[0], -1)))


class _DenseBody(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.Dense(x.shape[-1])(x), None


class _ScannedDense(nn.Module):
  """Five Dense layers under `nn.scan`, then one under a nested `jax.jit`."""

  @nn.compact
  def __call__(self, x, train):
    del train
    x = x.reshape((x.shape[0], -1))
    x, _ = nn.scan(
      _DenseBody, variable_axes={'params': 0}, split_rngs={'params': True}, length=5
    )()(x, None)
    w = self.param('w', nn.initializers.ones, (x.shape[-1], 3))
    return jax.jit(jnp.matmul)(x, w)


@pytest.mark.parametrize(
  'module,size,mult_adds,params',
  [
    # Output 6x14x8, each a 5x3 window over 3 channels.
    (_OneConv(), 16, 6 * 14 * 8 * (5 * 3 * 3), 5 * 3 * 3 * 8 + 8),
    # 16x16x6 outputs of a 1x1 over 3; 16x16x4 outputs of a 3x3 over 6/2.
    (_GroupedConv(), 16, 16 * 16 * 6 * 3 + 16 * 16 * 4 * (9 * 3), (3 * 6 + 6) + (9 * 3 * 4 + 4)),
    (_OneDense(), 16, 16 * 16 * 3 * 7, 16 * 16 * 3 * 7 + 7),
    # 4x4x3 = 48 features; scan length multiplies the body's count.
    (_ScannedDense(), 4, 5 * 48 * 48 + 48 * 3, 5 * (48 * 48 + 48) + 48 * 3),
  ],
  ids=['conv', 'grouped_conv', 'dense', 'scanned_and_jitted_dense'],
)
def test_counter_by_hand(module, size, mult_adds, params):
  assert complexity.count_mult_adds(module, size) == mult_adds
  assert complexity.count_params(module, size) == params


def test_main_lists_every_model(capsys, monkeypatch):
  # main() -> summary() -> the counters; memoised ones reuse the counts that
  # the tests above already made.
  for counter_name in _COUNTERS:
    monkeypatch.setattr(complexity, counter_name, functools.partial(_count, counter_name))
  complexity.print_table()
  out = capsys.readouterr().out
  rows = {}
  for line in out.splitlines():
    fields = line.split()
    if fields and fields[0] in models.MODELS:
      rows[fields[0]] = fields
  assert sorted(rows) == sorted(models.MODELS)
  for name, fields in rows.items():
    assert int(fields[1]) == _size(name)  # input size
    assert int(fields[2]) == _depth(name)  # layers
    assert fields[3] == f'{_params(name):,}'
    assert fields[5] == f'{_mult_adds(name) / 1e9:.3f}G'
  # Our count and the paper's, side by side.
  for name, value in TORCHVISION_PARAMS.items():
    assert rows[name][4] == f'{value:,}'
  assert rows['resnet50'][6] == '3.8G'
  assert rows['cifar_resnet20'][4] == '0.27M'
  assert rows['cifar_plain20'][4] == '-'
