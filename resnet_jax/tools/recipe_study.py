"""The options beyond the paper's recipe, one at a time and together, at one equal budget.

    python -m resnet_jax.tools.recipe_study --root=runs/recipes \
        --data_dir=DIR --results=results/imagenette_recipes

trains each variant of `--variants` (default: all, in the order below) ONE
AT A TIME (they share one machine's cores) as

    python -m resnet_jax.main --config=configs/study_imagenette_r18.py \
        --workdir=ROOT/VARIANT --config.input.data_dir=DIR <its overrides>

with its log in `ROOT/VARIANT/train.log`; `ROOT/progress.txt` is rewritten
every `--poll_s` with each run's step and latest errors. Run it again to
resume: finished runs are skipped, an interrupted one resumes from its last
checkpoint (what `main` does with a workdir). Then it collects
`RESULTS/recipes.md` and `recipes.json`: per variant its command, the final
center-crop top-1/top-5 error on the whole validation split, the error of
the weights' moving average where the variant keeps one, the change against
'paper' in percentage points, the epochs and the wall time (as measured by
this launcher, start-up and evaluations included), with the machine and the
versions the runs recorded; each run's records are copied beside.
`--collect_only` collects what has finished without starting anything.
Extra flags after `--` go to every run.

The base (configs/study_imagenette_r18.py) is the paper's ImageNet recipe at
64x64 crops, batch 64 (lr 0.025), 1,280 steps, lr /10 at 50% and 75%. Every
step count below is computed from the base's, so the variants follow it:

- paper: no overrides.
- paper_seed1: seed 1. The same recipe again: the seed-to-seed difference
  is the noise that any other difference is read against.
- cosine: a half-cosine decay to 0 after a linear warm-up over the first
  5% of the steps from 1% of the lr (torchvision's `lr_warmup_decay` 0.01).
- label_smoothing: 0.1 (Szegedy et al. 2016, torchvision, timm).
- mixup_cutmix: mixup alpha 0.2 or CutMix alpha 1.0, one of the two per
  batch (torchvision's recipe).
- ema: decay 1 - 4/steps (0.996875) at every step, after a warm-up of 10%
  of the steps. torchvision's 0.99998 is for 600 epochs; here the average's
  time constant, 1/(1 - decay) steps, is the last quarter of the run (the
  last lr phase), so the average holds the weights of the low-lr end and
  barely those of the start (weight e^-4); during the warm-up it is the
  weights themselves, not an average with the random initialisation.
- random_erasing: probability 0.1, torchvision's recipe's. Not Zhong et al.'s
  0.5 (for long CIFAR runs) or timm's 0.25: a run of 9 epochs underfits,
  where more erasing costs more than it regularises, and 'modern' uses the
  same value, so the two measure one setting.
- trivial_augment: TrivialAugment (torchvision's wide operations).
- random_resized_crop: Inception's crop (8%-100% of the area, aspect 3/4 to
  4/3) resized to 64 instead of the paper's scale augmentation.
- zero_init_residual: each residual branch's last BN scale starts at 0.
- modern: all of the above together (cosine with warm-up, label smoothing,
  mixup/CutMix, EMA, random erasing, TrivialAugment, random-resized crops,
  zero-init), as torchvision's new recipe combines them. Not its other
  changes (weight decay 2e-5 without decay on BN, lr 0.5 at batch 1,024,
  no PCA lighting, 600 epochs, testing above the training resolution): the
  base keeps the paper's, so the difference is these options'.
- batch512_linear: Goyal et al.'s large-batch rules at batch 512 (8x):
  lr 0.2 by the linear rule, a linear warm-up over 1 epoch from the batch-64
  lr (they start from the small batch's lr), BN statistics over groups of
  64 images as in 'paper' (they keep the per-worker BN batch), and the same
  number of epochs as 'paper' (steps, boundaries, logging, evaluation and
  checkpoint intervals divided by 8). Its difference to 'paper' within the
  seed-to-seed noise is the rule's claim.
- batch512_zero_init: the same with each residual branch's last BN scale
  starting at 0, which Goyal et al. also prescribe for large batches (it
  keeps the first steps at the high lr stable); read it against
  'zero_init_residual', the batch-64 run with the same initialisation.

`--study=cifar10_large_batch` asks the large-batch question alone at a
longer budget in epochs: the base is configs/study_cifar10_r20.py (ResNet-20,
the paper's CIFAR recipe at batch 64, lr 0.05, on 10,000 training images
for 30.7 epochs), the variants are paper, batch512_linear, paper_seed1,
batch512_zero_init and zero_init_residual in that order (the check first,
then its noise), and the large-batch warm-up is Goyal et al.'s 5 epochs
(98 steps of batch 512, against 18 in the imagenette study). Pass
`-- --config.input.dataset=cifar10_jpeg` for the local copy of CIFAR-10.
"""

import dataclasses
import json
import math
import os
import shlex
import sys
import time

from absl import app, flags

from resnet_jax import cli, config_lib, evaluation, run_record
from resnet_jax.tools import run_launcher

FLAGS = flags.FLAGS
flags.DEFINE_string('root', 'runs/recipes', "Parent of the runs' workdirs.")
flags.DEFINE_string('data_dir', None, "TFDS data directory holding the study's dataset.")
flags.DEFINE_string('results', None, 'Where to collect; None: ROOT/results.')
flags.DEFINE_list('variants', None, 'Variants to run, in this order (default: all).')
flags.DEFINE_bool('collect_only', False, 'Only collect the finished runs.')
flags.DEFINE_integer('poll_s', 30, 'Seconds between progress updates.')

LARGE_BATCH = 512
PAPER = 'paper'
# The records copied into the results: the usual ones, where it ran and how long.
RECORD_FILES = run_launcher.RECORD_FILES + (run_record.ENV_FILE, run_launcher.LAUNCHES_FILE)
# The repository's root (this file is resnet_jax/tools/recipe_study.py).
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')


@dataclasses.dataclass(frozen=True)
class Study:
  """A base config and the variants read against it."""

  config_name: str  # In the repository's configs/.
  train_images: int  # What the base trains on: epochs are counted in them.
  large_batch_warmup_epochs: float
  variant_names: tuple[str, ...] | None = None  # None: every variant.

  @property
  def config(self) -> str:
    return os.path.join(REPO, self.config_name)


STUDIES = {
  # imagenette224's whole training split; the warm-up of 1 epoch of the 8.7.
  'imagenette': Study('configs/study_imagenette_r18.py', 9_469, 1),
  # Goyal et al.'s 5-epoch warm-up, of 30.7 epochs; only the batch question.
  'cifar10_large_batch': Study(
    'configs/study_cifar10_r20.py',
    10_000,
    5,
    ('paper', 'batch512_linear', 'paper_seed1', 'batch512_zero_init', 'zero_init_residual'),
  ),
}
flags.DEFINE_enum('study', 'imagenette', list(STUDIES), 'Which base and variants (docstring).')


def _value(v) -> str:
  """A value as `--config.a.b=` parses it back to the same value."""
  if isinstance(v, tuple):
    return '(' + ','.join(map(str, v)) + (',)' if len(v) == 1 else ')')
  if isinstance(v, float):
    return repr(float(f'{v:.6g}'))  # 0.00025, not 0.00025000000000000006.
  return str(v)


def _large_batch(base, batch: int, study: Study) -> dict:
  """Goyal et al.'s rules at `batch`: the base's epochs, a warm-up from the
  base's lr over the study's warm-up epochs, BN over groups of the base's batch."""
  scale = base.input.batch_size / batch
  steps = lambda n: max(1, round(n * scale))
  return {
    'input.batch_size': batch,
    'schedule.total_steps': steps(base.schedule.total_steps),
    'schedule.boundaries': tuple(steps(b) for b in base.schedule.boundaries),
    'schedule.warmup_steps': config_lib.steps_for_epochs(
      study.large_batch_warmup_epochs, study.train_images, batch
    ),
    'schedule.warmup_init_lr': config_lib.scaled_lr(base),
    'model_options.bn_group_size': base.input.batch_size,
    'log_every_steps': steps(base.log_every_steps),
    'eval_every_steps': steps(base.eval_every_steps),
    'checkpoint_every_steps': steps(base.checkpoint_every_steps),
  }


def variant_fields(base, study: Study = STUDIES['imagenette']) -> dict[str, dict]:
  """Each of the study's variants' changed fields (dotted name -> value),
  computed from the base config (the module docstring says why each value)."""
  steps = base.schedule.total_steps
  options = {
    'cosine': {
      'schedule.kind': 'cosine',
      'schedule.warmup_steps': round(0.05 * steps),
      'schedule.warmup_init_lr': 0.01 * config_lib.scaled_lr(base),
    },
    'label_smoothing': {'label_smoothing': 0.1},
    'mixup_cutmix': {'mixing.mixup_alpha': 0.2, 'mixing.cutmix_alpha': 1.0},
    'ema': {'ema.decay': 1 - 4 / steps, 'ema.warmup_steps': round(0.1 * steps)},
    'random_erasing': {'input.random_erasing': 0.1},
    'trivial_augment': {'input.trivial_augment': True},
    'random_resized_crop': {'input.train_crop': 'random_resized'},
    'zero_init_residual': {'model_options.zero_init_last_bn': True},
  }
  modern = {field: v for fields in options.values() for field, v in fields.items()}
  table = {
    PAPER: {},
    'paper_seed1': {'seed': 1},
    **options,
    'modern': modern,
    'batch512_linear': _large_batch(base, LARGE_BATCH, study),
    'batch512_zero_init': {
      **_large_batch(base, LARGE_BATCH, study),
      **options['zero_init_residual'],
    },
  }
  return {name: table[name] for name in study.variant_names or table}


def variants(base, study: Study = STUDIES['imagenette']) -> dict[str, list[str]]:
  """Each of the study's variants' `--config.a.b=value` overrides of the base config."""
  return {
    name: [f'--config.{field}={_value(v)}' for field, v in fields.items()]
    for name, fields in variant_fields(base, study).items()
  }


@dataclasses.dataclass
class VariantRun(run_launcher.Run):
  """One variant's run, with its overrides of the base config."""

  overrides: list[str] = dataclasses.field(default_factory=list)
  # Its command as typed in the repository (the interpreter's and config's paths aside).
  display_command: str = ''


def make_runs(
  names, root: str, data_dir: str | None, extra_flags=(), study: Study = STUDIES['imagenette']
) -> list[VariantRun]:
  """The runs of the study's named variants (all, if None), each with its config."""
  table = variants(cli.load_config(study.config), study)
  unknown = [name for name in names or () if name not in table]
  if unknown:
    raise app.UsageError(f'unknown variants {", ".join(unknown)}; valid: {", ".join(table)}')
  runs = []
  for name in names or table:
    workdir = os.path.join(root, name)
    tail = [f'--workdir={workdir}']
    tail += [f'--config.input.data_dir={data_dir}'] if data_dir else []
    tail += table[name] + list(extra_flags)
    assignments = [f[len('--config.') :] for f in tail if f.startswith('--config.')]
    runs.append(
      VariantRun(
        name,
        workdir,
        command=[sys.executable, '-m', 'resnet_jax.main', f'--config={study.config}', *tail],
        config=cli.load_config(study.config, assignments),
        overrides=table[name],
        display_command=shlex.join(
          ['python', '-m', 'resnet_jax.main', f'--config={study.config_name}', *tail]
        ),
      )
    )
  return runs


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _row(run: VariantRun, train_images: int) -> dict:
  """A finished run's results, as the table reports them."""
  scored = _read_json(os.path.join(run.workdir, 'eval.json'))
  protocols = scored['protocols']
  center, averaged = protocols['center'], protocols.get(evaluation.ema_key('center'))
  batch = _read_json(os.path.join(run.workdir, 'config.json'))['input']['batch_size']
  records = run.records()
  train, _ = run_launcher.last_records(records)
  events = run_launcher.launches(run.workdir)
  launched = run_launcher.launched_time(events, records)
  starts = [e for e in events if e['event'] == 'start']
  percent = lambda result, key: 100 * result[key] if result else None
  return {
    'variant': run.name,
    'overrides': run.overrides,
    'command': run.display_command,
    'split': center.get('split'),
    'count': center.get('count'),
    'top1_error': percent(center, 'top1_error'),
    'top5_error': percent(center, 'top5_error'),
    'ema_top1_error': percent(averaged, 'top1_error'),
    'ema_top5_error': percent(averaged, 'top5_error'),
    'step': scored.get('step'),
    'batch_size': batch,
    'epochs': scored.get('step', 0) * batch / train_images,
    'final_train_error': percent(train, 'train_error'),
    'wall_s': launched if launched is not None else run_launcher.wall_time(records),
    'wall_measured': launched is not None,
    'launches': sum(e['event'] == 'start' for e in events),
    'machine': run_launcher.describe_machine(starts[-1]['machine']) if starts else None,
    'environment': run_launcher.describe_environment(run.workdir),
  }


def _add_deltas(rows: list[dict]):
  """Each row's change of top-1 error against 'paper', in points (None
  without a finished 'paper')."""
  paper = next((r for r in rows if r['variant'] == PAPER), None)
  for r in rows:
    for key in ('top1_error', 'ema_top1_error'):
      delta = None if paper is None or r[key] is None else r[key] - paper['top1_error']
      r[key.replace('error', 'delta')] = delta


def noise(rows: list[dict]) -> dict:
  """What a difference is read against: the seed-to-seed difference of the
  base, and the binomial sampling error of one error rate on the test set."""
  by_name = {r['variant']: r for r in rows}
  out = {'seed_difference': None, 'sampling_std_error': None}
  if PAPER in by_name and 'paper_seed1' in by_name:
    out['seed_difference'] = by_name['paper_seed1']['top1_error'] - by_name[PAPER]['top1_error']
  paper = by_name.get(PAPER)
  if paper and paper['count']:
    p = paper['top1_error'] / 100
    out['sampling_std_error'] = 100 * math.sqrt(p * (1 - p) / paper['count'])
  return out


def collect(
  runs: list[VariantRun], results: str, study: Study = STUDIES['imagenette']
) -> list[dict]:
  """Copies each finished run's records to `results`; writes the table."""
  os.makedirs(results, exist_ok=True)
  rows = []
  for run in runs:
    if run.finished():
      run_launcher.copy_records(run, results, RECORD_FILES)
      rows.append(_row(run, study.train_images))
  if not rows:
    print(f'nothing finished to collect under {os.path.dirname(runs[0].workdir)}', flush=True)
    return rows
  _add_deltas(rows)
  summary = {
    'base_config': study.config_name,
    'train_images': study.train_images,
    'collected': time.strftime('%Y-%m-%d %H:%M:%S'),
    'collected_on': run_launcher.describe_machine(run_launcher.machine()),
    **noise(rows),
    'rows': rows,
  }
  with open(os.path.join(results, 'recipes.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  table = markdown_table(summary)
  with open(os.path.join(results, 'recipes.md'), 'w') as f:
    f.write(table)
  print(table, flush=True)
  return rows


def _number(x, signed=False) -> str:
  if x is None:
    return ''
  return f'{x:+.2f}' if signed else f'{x:.2f}'


def _wall(r: dict) -> str:
  if not r['wall_s']:
    return ''
  minutes = f'{r["wall_s"] / 60:.1f} min'
  if not r['wall_measured']:
    return minutes + ' (training)'
  return minutes + (f' ({r["launches"]} launches)' if r['launches'] > 1 else '')


def _table_lines(rows: list[dict]) -> list[str]:
  lines = [
    '| variant | top-1 err. % | Δ top-1 (pts) | top-5 err. % | EMA top-1 % | EMA Δ (pts) '
    '| EMA top-5 % | batch | epochs | wall time |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    lines.append(
      f'| {r["variant"]} | {_number(r["top1_error"])} | {_number(r["top1_delta"], True)} | '
      f'{_number(r["top5_error"])} | {_number(r["ema_top1_error"])} | '
      f'{_number(r["ema_top1_delta"], True)} | {_number(r["ema_top5_error"])} | '
      f'{r["batch_size"]} | {r["epochs"]:.1f} | {_wall(r)} |'
    )
  return lines


def _noise_lines(summary: dict) -> list[str]:
  first = summary['rows'][0]
  lines = [
    '',
    f'Center-crop error of the final weights on the {first["count"]:,} images of '
    f"`{first['split']}`; EMA: of the weights' moving average, where the variant keeps "
    "one. Δ: change of top-1 error against 'paper' (its raw weights) in percentage "
    "points; negative is better. Wall time: from start to end of the run's processes "
    '(start-up, compiling and evaluations included; a run stopped and resumed: its '
    'launches together, each stopped one until its last metrics record, steps done '
    'again after a resume included; "training": from its first to its last metrics '
    'record).',
  ]
  if summary['seed_difference'] is not None:
    lines += [
      '',
      f"Noise: 'paper_seed1' - 'paper' = {summary['seed_difference']:+.2f} points (the "
      'same recipe, another seed: one sample of the seed-to-seed spread).',
    ]
  if summary['sampling_std_error'] is not None:
    lines += [
      '',
      'One error rate on these images has a sampling standard error of '
      f'{summary["sampling_std_error"]:.2f} points (binomial, at the paper error). '
      'A Δ not larger than these is within noise.',
    ]
  return lines


def _where_lines(rows: list[dict]) -> list[str]:
  """The machines and software the runs recorded, each with its runs."""
  lines = []
  for key, title in (('machine', 'Machine'), ('environment', 'Software')):
    groups = {}
    for r in rows:
      groups.setdefault(r[key] or 'not recorded', []).append(r['variant'])
    for what, names in groups.items():
      lines += ['', f'{title} ({", ".join(names)}):', '', '```', what, '```']
  return lines


def markdown_table(summary: dict) -> str:
  """The results table, the noise to read it against, the commands, and
  where the runs ran."""
  rows = summary['rows']
  lines = [
    f'# Options beyond the paper at one budget ({summary["base_config"]})',
    '',
    *_table_lines(rows),
    *_noise_lines(summary),
    '',
    '## Commands',
    '',
  ]
  lines += [f'- {r["variant"]}: `{r["command"]}`' for r in rows]
  lines += ['', '## Where they ran', *_where_lines(rows)]
  return '\n'.join(lines) + '\n'


def main(argv):
  study = STUDIES[FLAGS.study]
  runs = make_runs(FLAGS.variants, FLAGS.root, FLAGS.data_dir, argv[1:], study)
  results = FLAGS.results or os.path.join(FLAGS.root, 'results')
  unfinished = []
  if not FLAGS.collect_only:
    os.makedirs(FLAGS.root, exist_ok=True)
    unfinished = run_launcher.launch(runs, 1, FLAGS.root, FLAGS.poll_s)
  collect(runs, results, study)
  if unfinished:
    raise SystemExit(run_launcher.unfinished_error(unfinished))


if __name__ == '__main__':
  cli.run(main)
