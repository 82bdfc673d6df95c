"""The train-step benchmark: K steps per call timed per step, the table, overrides."""

import pytest

from resnet_jax import cli, config_lib, errors
from resnet_jax.tools import benchmark


def tiny(k=1, resident=False):
  config = config_lib.cifar10('cifar_resnet20')
  config.input.batch_size = 8
  config.steps_per_dispatch = k
  config.input.device_resident = resident
  return config


@pytest.mark.slow
def test_k_steps_per_call_are_timed_per_step_with_the_split_on_the_devices():
  result = benchmark.benchmark(tiny(k=4, resident=True), steps=2, warmup=1)
  assert result['steps_per_dispatch'] == 4 and result['device_resident']
  assert result['model'] == 'cifar_resnet20' and result['batch_size'] == 8
  assert result['devices'].startswith('8x')
  # images/s is per train step (a call runs 4 of them).
  assert result['images_per_sec'] == pytest.approx(1000 * 8 / result['step_ms'], abs=0.1)
  assert result['step_ms_p10'] <= result['step_ms'] <= result['step_ms_p90']


def test_table_has_a_row_per_net_and_a_column_per_dtype():
  rows = [
    dict(
      model=m,
      batch_size=b,
      dtype=d,
      images_per_sec=v,
      compile_s=c,
      devices='1x NVIDIA H100 80GB HBM3',
      jax='0.11.2',
      steps_per_dispatch=1,
    )
    for m, b, d, v, c in [
      ('cifar_resnet20', 128, 'float32', 20000.4, 3.2),
      ('cifar_resnet20', 128, 'bfloat16', 31000, 3.0),
      ('resnet50', 256, 'float32', 1500, 40.0),
    ]
  ]
  table = benchmark.markdown_table(rows).splitlines()
  assert (
    table[0] == '| net | batch | float32 images/s (compile s) | bfloat16 images/s (compile s) |'
  )
  assert table[2] == '| cifar_resnet20 | 128 | 20,000 (3) | 31,000 (3) |'
  assert table[3] == '| resnet50 | 256 | 1,500 (40) |  |'
  assert 'NVIDIA H100' in table[-1]


def test_overrides_parse_literals_and_are_type_checked():
  """`--set` goes through the command lines' own override path (`cli.apply_overrides`)."""
  config = tiny()
  cli.apply_overrides(
    config,
    [
      'steps_per_dispatch=50',
      'input.device_resident=true',
      'model_options.dtype=bfloat16',
      'schedule.boundaries=(10, 20)',
      'input.data_dir=/data/tfds',
    ],
    flag='--set=',
  )
  assert config.steps_per_dispatch == 50 and config.input.device_resident is True
  assert config.model_options.dtype == 'bfloat16' and config.input.data_dir == '/data/tfds'
  assert tuple(config.schedule.boundaries) == (10, 20)
  for assignment, words in [
    ('steps_per_dispatch=many', '--set=steps_per_dispatch=many: invalid literal for int()'),
    ('optimizer.wieght_decay=0', 'did you mean --set=optimizer.weight_decay?'),
    ('steps_per_dispatch', 'is not FIELD=VALUE'),
  ]:
    with pytest.raises(errors.ConfigError) as e:
      cli.apply_overrides(config, [assignment], flag='--set=')
    assert words in str(e.value) and '\n' not in str(e.value), str(e.value)
  assert config.steps_per_dispatch == 50
  assert benchmark.recipe('resnet50').input.dataset == 'imagenet2012'
  assert benchmark.recipe('cifar_plain20').input.dataset == 'cifar10'


def test_peer_rounds_time_only_the_steps_after_each_sides_warmup(monkeypatch):
  from resnet_jax.tools import peer_rounds

  calls = []

  class FakeWorker:
    def __init__(self, name, argv, env):
      self.name, self.setting = name, f'{name} setting'

    def time(self, what, count):
      calls.append((self.name, what, count))
      # A warm-up far slower than the timed steps: counted, it would show.
      return 100.0 if (what, count) == ('train', 2) else {'jax': 1.0, 'torch': 2.0}[self.name]

    def close(self):
      pass

  monkeypatch.setattr(peer_rounds, 'Worker', FakeWorker)
  config = config_lib.cifar10('cifar_resnet20')
  result = peer_rounds.compare(config, [], rounds=2, steps=5, eval_batches=0, warmup_steps=2)
  assert calls == [
    ('jax', 'train', 2),
    ('jax', 'train', 5),
    ('torch', 'train', 2),
    ('torch', 'train', 5),
    ('torch', 'train', 2),
    ('torch', 'train', 5),
    ('jax', 'train', 2),
    ('jax', 'train', 5),
  ]
  rates = result['train_images_per_sec']
  assert rates['jax']['median'] == 5 * 128 / 1.0 and rates['torch']['median'] == 5 * 128 / 2.0
  assert result['train_ratio'] == 2.0 and 'eval_ratio' not in result
  assert (result['steps'], result['warmup_steps']) == (5, 2)
  assert 'of 5 timed train steps after 2 untimed' in peer_rounds.describe(result)
