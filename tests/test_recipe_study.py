"""The study of the options beyond the paper: each variant's overrides resolve
into the config meant, the large-batch variant keeps the epochs, and the
launcher skips, resumes and collects (runs stood in for by tiny scripts)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import cli, config_lib, config_validation, data, run_record
from resnet_jax.tools import recipe_study, run_launcher
from resnet_jax.training import schedules

from helpers import DATA_DIR, ROOT, flat_fields, has_dataset

# imagenette224's metadata, so that configs validate without the dataset here
# (test_the_stand_in_metadata_is_imagenette224s checks it where it is).
IMAGENETTE = data.DatasetInfo(
  name='imagenette224',
  family='imagenet',
  num_classes=10,
  class_names=None,
  train_split='train',
  eval_split='validation',
  splits={'train': 9469, 'validation': 3925},
  image_shape=(None, None, 3),
  prepare='',
)
SINGLE_OPTIONS = {
  'cosine': {'schedule.kind', 'schedule.warmup_steps', 'schedule.warmup_init_lr'},
  'label_smoothing': {'label_smoothing'},
  'mixup_cutmix': {'mixing.mixup_alpha', 'mixing.cutmix_alpha'},
  'ema': {'ema.decay', 'ema.warmup_steps'},
  'random_erasing': {'input.random_erasing'},
  'trivial_augment': {'input.trivial_augment'},
  'random_resized_crop': {'input.train_crop'},
  'zero_init_residual': {'model_options.zero_init_last_bn'},
}
# Variant -> the config fields it changes, and nothing else.
CHANGED = {
  'paper': set(),
  'paper_seed1': {'seed'},
  **SINGLE_OPTIONS,
  'modern': set().union(*SINGLE_OPTIONS.values()),
  'batch512_linear': {
    'input.batch_size',
    'schedule.total_steps',
    'schedule.boundaries',
    'schedule.warmup_steps',
    'schedule.warmup_init_lr',
    'model_options.bn_group_size',
    'log_every_steps',
    'eval_every_steps',
    'checkpoint_every_steps',
  },
}
CHANGED['batch512_zero_init'] = CHANGED['batch512_linear'] | {'model_options.zero_init_last_bn'}


IMAGENETTE_STUDY = recipe_study.STUDIES['imagenette']
LARGE_BATCH_STUDY = recipe_study.STUDIES['cifar10_large_batch']


@pytest.fixture
def stand_in_metadata(monkeypatch):
  monkeypatch.setattr(data, 'dataset_info', lambda inp: IMAGENETTE)


def _base():
  return cli.load_config(IMAGENETTE_STUDY.config)


def _config(name):
  """The variant's config, loaded as main loads its command line's flags."""
  overrides = recipe_study.variants(_base())[name]
  return cli.load_config(IMAGENETTE_STUDY.config, [f[len('--config.') :] for f in overrides])


def _lr(config):
  schedule = schedules.learning_rate_schedule(config)
  return lambda step: float(schedule(jnp.asarray(step, jnp.int32)))


def test_every_variant_is_listed_here():
  assert list(recipe_study.variants(_base())) == list(CHANGED)


@pytest.mark.parametrize('name', CHANGED)
def test_variant_validates_and_changes_only_its_fields(name, stand_in_metadata):
  config = _config(name)
  config_validation.validate(config, num_devices=1)
  paper, variant = flat_fields(_config('paper').to_dict()), flat_fields(config.to_dict())
  assert {key for key in variant if variant[key] != paper[key]} == CHANGED[name]


def test_the_options_take_the_values_documented(stand_in_metadata):
  cosine = _config('cosine')
  lr = _lr(cosine)
  assert cosine.schedule.warmup_steps == 64  # 5% of the 1,280 steps.
  assert lr(0) == pytest.approx(0.00025, rel=1e-5) and lr(64) == pytest.approx(0.025, rel=1e-5)
  assert lr(1280) == pytest.approx(0.0, abs=1e-7)
  ema = _config('ema')
  assert ema.ema.decay == pytest.approx(0.996875) and ema.ema.every_steps == 1
  assert ema.ema.warmup_steps == 128
  mixing = _config('mixup_cutmix').mixing
  assert (mixing.mixup_alpha, mixing.cutmix_alpha, mixing.cutmix_probability) == (0.2, 1.0, 0.5)
  assert _config('label_smoothing').label_smoothing == 0.1
  assert _config('random_erasing').input.random_erasing == 0.1
  assert _config('paper_seed1').seed == 1


def test_modern_is_every_single_option_together():
  table = recipe_study.variants(_base())
  together = [flag for name in SINGLE_OPTIONS for flag in table[name]]
  assert table['modern'] == together and len(set(together)) == len(together)


def test_the_base_is_the_paper_recipe_at_batch_64():
  base = _base()
  assert config_lib.scaled_lr(base) == pytest.approx(0.025, rel=1e-5)
  assert base.schedule.kind == 'piecewise' and base.schedule.total_steps == 1280
  assert tuple(base.schedule.boundaries) == (640, 960)  # 50% and 75%.
  assert not base.input.holdout_validation and base.input.eval_split is None
  assert tuple(base.eval.final_protocols) == ('center',)


def test_batch512_sees_the_papers_images_at_8x_the_lr(stand_in_metadata):
  paper, large = _config('paper'), _config('batch512_linear')
  images = lambda c, steps: steps * c.input.batch_size
  assert images(large, large.schedule.total_steps) == images(paper, paper.schedule.total_steps)
  assert [images(large, b) for b in large.schedule.boundaries] == [
    images(paper, b) for b in paper.schedule.boundaries
  ]
  for key in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    assert images(large, large[key]) == images(paper, paper[key]), key
  assert config_lib.scaled_lr(large) == pytest.approx(8 * config_lib.scaled_lr(paper))
  lr, warmup = _lr(large), large.schedule.warmup_steps
  assert warmup == round(9469 / 512)  # One epoch.
  assert lr(0) == pytest.approx(0.025, rel=1e-5) and lr(warmup) == pytest.approx(0.2, rel=1e-5)
  assert lr(79) == pytest.approx(0.2, rel=1e-5) and lr(80) == pytest.approx(0.02, rel=1e-5)
  assert _lr(paper)(639) == pytest.approx(0.025, rel=1e-5) and _lr(paper)(640) == pytest.approx(
    0.0025, rel=1e-5
  )
  assert large.model_options.bn_group_size == paper.input.batch_size  # BN over 64, as paper's.


def test_step_counts_follow_the_base():
  base = _base()
  base.schedule.total_steps, base.schedule.boundaries = 2560, (1280, 1920)
  fields = recipe_study.variant_fields(base)
  assert fields['cosine']['schedule.warmup_steps'] == 128
  assert fields['ema'] == {'ema.decay': 1 - 4 / 2560, 'ema.warmup_steps': 256}
  large = fields['batch512_linear']
  assert large['schedule.total_steps'] == 320 and large['schedule.boundaries'] == (160, 240)
  assert fields['batch512_zero_init'] == {**large, 'model_options.zero_init_last_bn': True}


def test_the_cifar_study_asks_the_large_batch_question_at_30_epochs():
  base = cli.load_config(LARGE_BATCH_STUDY.config)
  table = recipe_study.variants(base, LARGE_BATCH_STUDY)
  assert list(table) == [
    'paper',
    'batch512_linear',
    'paper_seed1',
    'batch512_zero_init',
    'zero_init_residual',
  ]
  large = cli.load_config(
    LARGE_BATCH_STUDY.config, [f[len('--config.') :] for f in table['batch512_linear']]
  )
  assert large.schedule.total_steps * 512 == base.schedule.total_steps * 64  # Equal epochs.
  assert base.schedule.total_steps * 64 / LARGE_BATCH_STUDY.train_images == pytest.approx(30.72)
  assert large.schedule.warmup_steps == 98  # Goyal et al.'s 5 epochs of 10,000 images.
  lr = _lr(large)
  assert lr(0) == pytest.approx(0.05, rel=1e-5) and lr(98) == pytest.approx(0.4, rel=1e-5)
  assert lr(299) == pytest.approx(0.4, rel=1e-5) and lr(300) == pytest.approx(0.04, rel=1e-5)
  assert _lr(base)(2399) == pytest.approx(0.05, rel=1e-5)
  assert large.model_options.bn_group_size == 64


def test_variants_parse_on_mains_own_command_line():
  """The exact flags, through main's locked `--config` flag."""
  script = (
    'from absl import app\n'
    'from resnet_jax import main\n'
    'app.run(lambda argv: print(main.FLAGS.config.to_json()))\n'
  )
  table = recipe_study.variants(_base())
  for name in ('modern', 'batch512_linear'):
    flags = [f'--config={IMAGENETTE_STUDY.config}', '--workdir=x', *table[name]]
    result = subprocess.run(
      [sys.executable, '-c', script, *flags],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed == json.loads(_config(name).to_json()), name


@pytest.mark.skipif(not has_dataset('imagenette224'), reason='imagenette224 is not here')
def test_the_stand_in_metadata_is_imagenette224s():
  config = _base()
  config.input.data_dir = DATA_DIR
  info = data.dataset_info(config.input)
  assert (info.num_classes, info.family, info.eval_split) == (10, 'imagenet', 'validation')
  assert info.splits == IMAGENETTE.splits
  assert info.num_train == IMAGENETTE_STUDY.train_images


def _finish(workdir, config, top1, ema_top1=None, batch=64, start=1000.0):
  """Writes what a finished run leaves: config.json, metrics.jsonl, eval.json."""
  os.makedirs(workdir, exist_ok=True)
  steps = config.schedule.total_steps
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'input': {'batch_size': batch}}, f)
  records = [
    {'step': steps // 2, 'time': start, 'train_error': 0.5, 'train_loss': 1.4},
    {'step': steps, 'time': start + 600, 'train_error': 0.25, 'train_loss': 0.7},
    {'step': steps, 'time': start + 630, 'validation_error': top1},
  ]
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(record) + '\n' for record in records)
  protocols = {'center': _result(top1)}
  if ema_top1 is not None:
    protocols['center_ema'] = {**_result(ema_top1), 'weights': 'ema'}
  with open(os.path.join(workdir, 'eval.json'), 'w') as f:
    json.dump({'step': steps, 'protocols': protocols}, f)


def _result(top1):
  return {'split': 'validation', 'top1_error': top1, 'top5_error': top1 / 4, 'count': 3925}


def test_collect_writes_the_table_with_deltas_and_the_ema(tmp_path):
  runs = {r.name: r for r in recipe_study.make_runs(None, str(tmp_path / 'runs'), '/data/tfds')}
  _finish(runs['paper'].workdir, runs['paper'].config, 0.32)
  _finish(runs['paper_seed1'].workdir, runs['paper_seed1'].config, 0.33)
  _finish(runs['ema'].workdir, runs['ema'].config, 0.31, ema_top1=0.29)
  _finish(runs['batch512_linear'].workdir, runs['batch512_linear'].config, 0.335, batch=512)
  _finish(runs['modern'].workdir, runs['modern'].config, 0.30)  # Without its EMA's result.
  with open(os.path.join(runs['paper'].workdir, run_launcher.LAUNCHES_FILE), 'w') as f:
    machine = {'cpu': 'Some CPU', 'cores': 2, 'hostname': 'h'}
    f.write(json.dumps({'event': 'start', 'time': 0, 'machine': machine, 'command': []}) + '\n')
    f.write(json.dumps({'event': 'end', 'time': 1320, 'returncode': 0}) + '\n')
  with open(os.path.join(runs['batch512_linear'].workdir, run_launcher.LAUNCHES_FILE), 'w') as f:
    for event, t in (('start', 1300), ('start', 1700), ('end', 1800)):
      f.write(json.dumps({'event': event, 'time': t, 'machine': machine, 'command': []}) + '\n')
  with open(os.path.join(runs['paper'].workdir, run_record.ENV_FILE), 'w') as f:
    json.dump(run_record.environment(), f)

  rows = recipe_study.collect(list(runs.values()), str(tmp_path / 'results'))

  by_name = {r['variant']: r for r in rows}
  assert list(by_name) == ['paper', 'paper_seed1', 'ema', 'batch512_linear']  # modern: unfinished.
  assert by_name['ema']['top1_delta'] == pytest.approx(-1.0)
  assert by_name['ema']['ema_top1_delta'] == pytest.approx(-3.0)
  assert by_name['paper']['ema_top1_error'] is None
  assert by_name['batch512_linear']['epochs'] == pytest.approx(by_name['paper']['epochs'])
  assert by_name['paper']['wall_s'] == 1320 and by_name['paper']['wall_measured']
  assert by_name['ema']['wall_s'] == 630 and not by_name['ema']['wall_measured']
  # Stopped 330 s after its start (its last record: 1630), resumed, ended 100 s later.
  assert by_name['batch512_linear']['wall_s'] == 330 + 100
  assert by_name['batch512_linear']['launches'] == 2
  assert by_name['ema']['command'] == (
    'python -m resnet_jax.main --config=configs/study_imagenette_r18.py '
    f'--workdir={runs["ema"].workdir} --config.input.data_dir=/data/tfds '
    '--config.ema.decay=0.996875 --config.ema.warmup_steps=128'
  )
  saved = json.load(open(tmp_path / 'results' / 'recipes.json'))
  assert saved['seed_difference'] == pytest.approx(1.0) and saved['rows'] == rows
  table = (tmp_path / 'results' / 'recipes.md').read_text()
  assert '| paper | 32.00 | +0.00 | 8.00 |  |  |  | 64 | 8.7 | 22.0 min |' in table
  ema_row = '| ema | 31.00 | -1.00 | 7.75 | 29.00 | -3.00 | 7.25 | 64 | 8.7 | 10.5 min (training) |'
  assert ema_row in table
  assert '| 512 | 8.7 | 7.2 min (2 launches) |' in table
  assert "'paper_seed1' - 'paper' = +1.00 points" in table
  assert 'standard error of 0.74 points' in table  # sqrt(0.32 * 0.68 / 3925).
  assert f'JAX {jax.__version__} on cpu' in by_name['paper']['environment']
  assert by_name['paper']['environment'] in table and by_name['ema']['environment'] is None
  assert 'Some CPU, 2 cores (host h)' in table and f'`{by_name["ema"]["command"]}`' in table
  assert (tmp_path / 'results' / 'ema' / 'eval.json').exists()


def _stand_in(run, exit_code=0):
  """Replaces the run's command with a script that finishes it (or fails)."""
  steps = run.config.schedule.total_steps
  protocols = {'center': _result(0.3), 'center_ema': _result(0.29)}
  scored = json.dumps({'step': steps, 'protocols': protocols})
  path = os.path.join(run.workdir, 'eval.json')
  body = f'open({path!r}, "w").write({scored!r})' if exit_code == 0 else 'print("boom")'
  run.command = [sys.executable, '-c', f'{body}\nraise SystemExit({exit_code})']


def test_launch_skips_finished_runs_and_runs_the_others_one_at_a_time(tmp_path):
  root = str(tmp_path / 'runs')
  runs = recipe_study.make_runs(['paper', 'ema', 'cosine'], root, None)
  paper, ema, cosine = runs
  _finish(paper.workdir, paper.config, 0.32)
  _finish(ema.workdir, ema.config, 0.31)  # Stopped before its EMA's result: not finished.
  for run in runs:
    _stand_in(run)
  _stand_in(cosine, exit_code=3)

  unfinished = run_launcher.launch(runs, 1, root, poll_s=0.1)

  assert unfinished == [cosine] and cosine.outcome == 'exit 3'
  assert paper.process is None and paper.finished()  # Skipped.
  assert ema.finished() and ema.returncode == 0
  events = run_launcher.launches(ema.workdir)
  assert [e['event'] for e in events] == ['start', 'end']
  assert events[0]['machine']['cores'] >= 1 and run_launcher.launched_time(events) >= 0
  assert 'boom' in open(cosine.log_path).read()
  progress = open(os.path.join(root, 'progress.txt')).read()
  assert progress.count(': finished') == 2 and 'cosine: did not finish (exit 3' in progress
  assert not run_launcher.launch(runs[:2], 1, root, poll_s=0.1)  # Nothing left to start.
  assert len(run_launcher.launches(ema.workdir)) == 2


def test_an_unknown_variant_is_named_with_the_valid_ones():
  with pytest.raises(Exception, match='unknown variants nope; valid: paper, paper_seed1'):
    recipe_study.make_runs(['paper', 'nope'], 'runs', None)


def test_collect_only_on_the_command_line(tmp_path):
  [run] = recipe_study.make_runs(['paper'], str(tmp_path / 'runs'), None)
  _finish(run.workdir, run.config, 0.32)
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'resnet_jax.tools.recipe_study',
      f'--root={tmp_path}/runs',
      f'--results={tmp_path}/results',
      '--variants=paper,ema',
      '--collect_only',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'started' not in result.stdout and '| paper | 32.00 | +0.00 |' in result.stdout
  assert (tmp_path / 'results' / 'recipes.md').exists()
