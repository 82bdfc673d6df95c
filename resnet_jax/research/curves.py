"""Training curves in the style of the paper's Fig. 1 / Fig. 6, from metrics.jsonl.

    python -m resnet_jax.research.curves --out=curves.png WORKDIR [WORKDIR ...]

Dashed lines: training error (mean over each logging interval); bold lines:
test error (CIFAR), or validation error of the center crop (ImageNet, as
Fig. 4); as the paper draws them.
Needs matplotlib (`pip install -e ".[notebooks]"`).
"""

import json
import os

from absl import flags

from resnet_jax import cli, errors

EVAL_KEYS = ('test_error', 'validation_error', 'holdout_error')

FLAGS = flags.FLAGS
# Defined only when this module runs as the command line: imported as a
# library (by tools.cifar_table, notebooks), it leaves the flags to the
# program that imports it (a required --out would fail that program).
if __name__ == '__main__':
  flags.DEFINE_string('out', None, 'The figure (png).', required=True)
  flags.DEFINE_string('labels', None, 'Comma-separated legend labels, one per workdir.')
  flags.DEFINE_enum(
    'eval_key',
    None,
    EVAL_KEYS,
    'The bold curve; default: test_error if logged, else validation_error.',
  )


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir/metrics.jsonl`, in the order they were written.

  A resumed run appends to the same file; a record for a step written again
  (work redone after a restart) replaces the earlier one.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    raise FileNotFoundError(f'no metrics.jsonl in {workdir}: is it a training workdir?')
  by_key = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      kind = (
        'eval'
        if any(k.endswith('_error') and not k.startswith('train') for k in record)
        else 'train'
      )
      by_key[(record['step'], kind)] = record
  return sorted(by_key.values(), key=lambda r: r['step'])


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of one metric."""
  points = [(r['step'], r[key]) for r in records if key in r]
  return [p[0] for p in points], [p[1] for p in points]


def default_eval_key(records: list[dict]) -> str:
  """The error the paper plots bold: test (CIFAR), else validation (ImageNet)."""
  for key in EVAL_KEYS:
    if any(key in r for r in records):
      return key
  return EVAL_KEYS[0]


def plot(
  workdirs: list[str], out: str, labels: list[str] | None = None, eval_key: str | None = None
):
  """Writes `figure(workdirs, labels, eval_key)` to the image file `out`."""
  figure(workdirs, labels, eval_key).savefig(out, dpi=120)


def figure(workdirs: list[str], labels: list[str] | None = None, eval_key: str | None = None):
  """A matplotlib Figure of training (dashed) and `eval_key` (bold; None:
  `default_eval_key`) error, in %, against iterations, one colour per workdir."""
  # A Figure of its own (no pyplot): the caller's backend (e.g. a
  # notebook's inline one) is left alone.
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  eval_key = eval_key or default_eval_key(read_metrics(workdirs[0]))
  for i, workdir in enumerate(workdirs):
    records = read_metrics(workdir)
    label = labels[i] if labels else os.path.basename(os.path.normpath(workdir))
    color = f'C{i}'
    steps, values = series(records, 'train_error')
    ax.plot(steps, [100 * v for v in values], color=color, lw=1.0, ls='--')
    steps, values = series(records, eval_key)
    ax.plot(steps, [100 * v for v in values], color=color, lw=2.2, label=label)
  ax.set_xlabel('iterations')
  ax.set_ylabel('error (%)')
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(title=f'dashed: train, bold: {eval_key.replace("_", " ")}')
  fig.tight_layout()
  return fig


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise errors.ConfigError('give one or more training workdirs after the flags')
  labels = FLAGS.labels.split(',') if FLAGS.labels else None
  if labels and len(labels) != len(workdirs):
    raise errors.ConfigError(f'--labels has {len(labels)} names for {len(workdirs)} workdirs')
  plot(workdirs, FLAGS.out, labels, FLAGS.eval_key)
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  cli.run(main)
