"""Table 6 and Fig. 6 in one command: the CIFAR-10 runs side by side, then their results.

    python -m resnet_jax.tools.cifar_table --root=runs/table6 \
        --data_dir=DIR --results=results/table6

starts `python -m resnet_jax.main` on `--dataset` in DIR (a TFDS data
directory) for every net of `--nets` (default: the Table 6 ResNets 20-110
and plain-20/56 of Fig. 6) and seed of `--seeds` on one machine at once,
`--concurrent` at a time, each in its own workdir `ROOT/NET`
(`ROOT/NET_seedS` for seeds other than 0) with its log in `train.log`
there; on one GPU they share it (each process gets an equal slice of its
memory: `XLA_PYTHON_CLIENT_MEM_FRACTION`). `ROOT/progress.txt` is
rewritten every `--poll_s` with each run's step and latest errors, for
polling a detached launch (`setsid ... &`).

Run it again to resume: finished runs are skipped and interrupted ones resume
from their last checkpoint (what `main` does with a workdir). When every run
has ended it collects: `RESULTS/table6.md` (measured test error beside the
paper's, params, wall time; best and mean ± std over seeds, as the paper
gives ResNet-110), `table6.json`, `fig6.png` (Fig. 6's three
panels: plain, ResNet, and ResNet-110 vs -1202 where run) and each run's
`metrics.jsonl`, `eval.json`, `config.json` and `train.log`. `--collect_only`
collects whatever has finished without starting anything.

Extra flags after `--` go to every run, e.g. `-- --config.steps_per_dispatch=50
--config.input.device_resident=True` on a GPU.
"""

import dataclasses
import json
import os
import sys

import numpy as np
from absl import app, flags

from resnet_jax import cli
from resnet_jax.research import curves
from resnet_jax.tools import run_launcher

FLAGS = flags.FLAGS
flags.DEFINE_string('root', 'runs/table6', "Parent of the runs' workdirs.")
flags.DEFINE_list(
  'nets',
  ['resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110', 'plain20', 'plain56'],
  'Nets to run: the NET of configs/cifar10_NET.py.',
)
flags.DEFINE_list(
  'seeds',
  ['0'],
  'Seeds: one run per net and seed (Table 6 gives '
  'ResNet-110 as best and mean+-std of 5 runs: --seeds=0,1,2,3,4).',
)
flags.DEFINE_string(
  'dataset', 'cifar10_jpeg', 'TFDS name: cifar10, or the local cifar10_jpeg copy.'
)
flags.DEFINE_string('data_dir', None, "TFDS data directory (None: TFDS's default).")
flags.DEFINE_integer('concurrent', 0, 'Runs at once (0: all of them).')
flags.DEFINE_string('results', None, 'Where to collect; None: ROOT/results.')
flags.DEFINE_bool('collect_only', False, 'Only collect the finished runs.')
flags.DEFINE_integer('poll_s', 30, 'Seconds between progress updates.')

# The repository's configs/ (this file is resnet_jax/tools/cifar_table.py).
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'configs')
# Table 6's test errors (%), and Fig. 6's plain nets (no table entry).
PAPER_ERROR = {
  'resnet20': 8.75,
  'resnet32': 7.51,
  'resnet44': 7.17,
  'resnet56': 6.97,
  'resnet110': 6.43,
  'resnet1202': 7.93,
}
PAPER_PARAMS = {
  'resnet20': '0.27M',
  'resnet32': '0.46M',
  'resnet44': '0.66M',
  'resnet56': '0.85M',
  'resnet110': '1.7M',
  'resnet1202': '19.4M',
}


@dataclasses.dataclass
class Run(run_launcher.Run):
  """One net's training run, for one seed."""

  net: str = ''
  seed: int = 0


def run_name(net: str, seed: int) -> str:
  """The net, with the seed if it is not 0 (also the workdir's name)."""
  return net if seed == 0 else f'{net}_seed{seed}'


def make_runs(nets, seeds, root, dataset, data_dir, extra_flags) -> list[Run]:
  runs = []
  for net in nets:
    config = os.path.join(CONFIGS, f'cifar10_{net}.py')
    if not os.path.exists(config):
      choices = sorted(
        f[len('cifar10_') : -3] for f in os.listdir(CONFIGS) if f.startswith('cifar10_')
      )
      raise app.UsageError(f'no config for net {net!r} ({config}); valid: {", ".join(choices)}')
    for seed in seeds:
      name = run_name(net, seed)
      run = Run(name, os.path.join(root, name), net=net, seed=seed)
      run.command = [
        sys.executable,
        '-m',
        'resnet_jax.main',
        f'--config={config}',
        f'--workdir={run.workdir}',
        f'--config.input.dataset={dataset}',
        f'--config.seed={seed}',
      ]
      if data_dir:
        run.command.append(f'--config.input.data_dir={data_dir}')
      run.command += list(extra_flags)
      runs.append(run)
  return runs


def collect(runs: list[Run], results: str) -> list[dict]:
  """Copies each finished run's records to `results`; writes the table and figure."""
  os.makedirs(results, exist_ok=True)
  rows = []
  for run in runs:
    if not run.finished():
      continue
    run_launcher.copy_records(run, results)
    with open(os.path.join(run.workdir, 'eval.json')) as f:
      scored = json.load(f)
    center = scored['protocols']['center']
    records = run.records()
    train, _ = run_launcher.last_records(records)
    with open(os.path.join(run.workdir, 'config.json')) as f:
      dataset = json.load(f)['input']['dataset']
    rows.append(
      {
        'run': run.name,
        'net': run.net,
        'seed': run.seed,
        'dataset': dataset,
        'test_error': 100 * center['top1_error'],
        'count': center.get('count'),
        'step': scored.get('step'),
        'final_train_error': 100 * train['train_error'] if train else None,
        'paper_error': PAPER_ERROR.get(run.net),
        'params': PAPER_PARAMS.get(run.net),
        'wall_s': run_launcher.wall_time(records),
      }
    )
  if not rows:
    print(f'nothing finished to collect under {FLAGS.root}', flush=True)
    return rows
  with open(os.path.join(results, 'table6.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(results, 'table6.md'), 'w') as f:
    f.write(markdown_table(rows))
  _figure(runs, os.path.join(results, 'fig6.png'))
  print(markdown_table(rows), flush=True)
  return rows


def markdown_table(rows: list[dict]) -> str:
  lines = [
    '| run | params (paper) | test error % | paper % | final train error % | steps | wall time |',
    '|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    wall = f'{r["wall_s"] / 60:.1f} min' if r['wall_s'] else ''
    paper = f'{r["paper_error"]:.2f}' if r['paper_error'] is not None else '(Fig. 6)'
    train = f'{r["final_train_error"]:.2f}' if r['final_train_error'] is not None else ''
    lines.append(
      f'| {r["run"]} | {r["params"] or ""} | {r["test_error"]:.2f} | {paper} | '
      f'{train} | {r["step"]} | {wall} |'
    )
  by_net = {}
  for r in rows:
    by_net.setdefault(r['net'], []).append(r['test_error'])
  repeated = {net: errors for net, errors in by_net.items() if len(errors) > 1}
  if repeated:
    lines += ['', '| net | runs | best % | mean ± std % | paper % |', '|---|---|---|---|---|']
    for net, errors in repeated.items():
      paper = {'resnet110': '6.43 (6.61 ± 0.16, 5 runs)'}.get(net, PAPER_ERROR.get(net, ''))
      lines.append(
        f'| {net} | {len(errors)} | {min(errors):.2f} | {np.mean(errors):.2f} ± '
        f'{np.std(errors, ddof=1):.2f} | {paper} |'
      )
  if any(r.get('dataset') == 'cifar10_jpeg' for r in rows):
    lines.append('')
    lines.append(
      'Trained and tested on cifar10_jpeg, CIFAR-10 stored as JPEG (quality '
      'about 75, pixels off by 5.8/255 on average): its README expects a few '
      "tenths of a percent more error than on the paper's lossless images."
    )
  return '\n'.join(lines) + '\n'


def _figure(runs: list[Run], out: str):
  """Fig. 6's panels for the finished runs: plain nets, ResNets, 110 vs 1202."""
  first = {}
  for run in runs:  # One curve per net: its first seed.
    if run.finished():
      first.setdefault(run.net, run)
  done = list(first.values())
  panels = [
    ('plain', [r for r in done if r.net.startswith('plain')]),
    ('ResNet', [r for r in done if r.net.startswith('resnet') and r.net != 'resnet1202']),
  ]
  deep = [r for r in done if r.net in ('resnet110', 'resnet1202')]
  if any(r.net == 'resnet1202' for r in deep):
    panels.append(('ResNet-110 vs 1202', deep))
  panels = [(title, rs) for title, rs in panels if rs]
  from matplotlib.figure import Figure

  fig = Figure(figsize=(5 * len(panels), 4))
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (title, panel_runs) in zip(axes, panels):
    final = 0.0
    for i, run in enumerate(panel_runs):
      records = run.records()
      steps, values = curves.series(records, 'train_error')
      ax.plot(steps, [100 * v for v in values], color=f'C{i}', lw=0.6, alpha=0.7)
      steps, values = curves.series(records, 'test_error')
      ax.plot(
        steps,
        [100 * v for v in values],
        color=f'C{i}',
        lw=2,
        label=run.net,
        marker='o' if len(steps) < 3 else None,
      )  # A lone point shows too.
      final = max(final, 100 * values[-1]) if values else final
    ax.set_title(title)
    ax.set_xlabel('iterations')
    ax.set_ylabel('error (%)')
    # The paper's 0-20% where the nets trained; all of it for short runs.
    ax.set_ylim(0, 20 if final < 15 else 100)
    ax.grid(alpha=0.3)
    ax.legend(title='thin: train, bold: test')
  fig.tight_layout()
  fig.savefig(out, dpi=120)


def main(argv):
  extra_flags = argv[1:]
  seeds = [int(seed) for seed in FLAGS.seeds]
  runs = make_runs(FLAGS.nets, seeds, FLAGS.root, FLAGS.dataset, FLAGS.data_dir, extra_flags)
  results = FLAGS.results or os.path.join(FLAGS.root, 'results')
  unfinished = []
  if not FLAGS.collect_only:
    os.makedirs(FLAGS.root, exist_ok=True)
    unfinished = run_launcher.launch(runs, FLAGS.concurrent, FLAGS.root, FLAGS.poll_s)
  collect(runs, results)
  if unfinished:
    raise SystemExit(run_launcher.unfinished_error(unfinished))


if __name__ == '__main__':
  cli.run(main)
