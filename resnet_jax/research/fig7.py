"""Fig. 7 of the paper from trained workdirs: the figure, its numbers, the CLI.

    python -m resnet_jax.research.fig7 --workdir=runs/plain20 --workdir=runs/resnet20 \
        --out=fig7.png [--json=fig7.json] [--data_dir=DIR] [--beside=earlier/fig7.json]

Fig. 7 plots the std of each 3x3 layer's response on the CIFAR-10 test set,
by layer index in network order (top) and sorted in descending order
(bottom); `research.responses` defines and streams the statistics. The plot
needs matplotlib (`pip install -e ".[notebooks]"`).
"""

import json
import os
import re

import jax
import ml_collections
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import cli, distributed, errors, trained_workdir, workdir_files
from resnet_jax import data as data_lib
from resnet_jax.research import responses

FLAGS = flags.FLAGS
# Defined only when this module runs as the command line: imported as a
# library (by notebooks, tests), it leaves the flags to the program that
# imports it, which may define --workdir or --out itself.
if __name__ == '__main__':
  flags.DEFINE_multi_string('workdir', None, 'A training workdir (repeat for several).')
  flags.DEFINE_string('out', None, 'The figure (png).')
  flags.DEFINE_string('json', None, 'The numbers (default: --out with a .json suffix).')
  flags.DEFINE_string(
    'data_dir', None, "Overrides each workdir config's input.data_dir (a TFDS data directory)."
  )
  flags.DEFINE_string('dataset', None, "Overrides each workdir config's input.dataset.")
  flags.DEFINE_string('split', None, 'Default: the evaluation split (CIFAR: test).')
  flags.DEFINE_integer(
    'batch_size', None, "Images per batch (default: the config's eval_batch_size)."
  )
  flags.DEFINE_multi_string(
    'label', None, "Legend labels, one per --workdir (default: the model's name, e.g. ResNet-20)."
  )
  flags.DEFINE_multi_string(
    'beside', None, 'An earlier run of this command: its JSON, whose nets are drawn beside.'
  )


def model_label(model_name: str) -> str:
  """The paper's name of a model: 'cifar_resnet20' -> 'ResNet-20',
  'cifar_plain56' -> 'plain-56', 'resnet50' -> 'ResNet-50'."""
  m = re.fullmatch(r'(?:cifar_)?(resnet|plain)(\d+)', model_name)
  if not m:
    return model_name
  return f'{"ResNet" if m[1] == "resnet" else "plain"}-{m[2]}'


def override_input(
  config: ml_collections.ConfigDict, data_dir: str | None = None, dataset: str | None = None
) -> ml_collections.ConfigDict:
  """A copy of `config` reading its data from `data_dir` / `dataset` where given."""
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    if data_dir is not None:
      config.input.data_dir = data_dir
    if dataset is not None:
      config.input.dataset = dataset  # An unknown name fails when it is read, in one line.
  return config


def workdir_responses(
  workdir: str,
  split: str | None = None,
  data=None,
  config: ml_collections.ConfigDict | None = None,
  *,
  batch_size: int | None = None,
  mesh=None,
) -> dict:
  """Fig. 7 statistics of a trained workdir's latest checkpoint.

  Args:
    workdir: a training workdir.
    split: default: the dataset's evaluation split (CIFAR: test).
    data: optional preloaded CIFAR `(train, {name: split})` (tests, notebooks).
    config: default: the workdir's own (`workdir_files.read_config`); its
      `input` says where the data is (see `override_input`).
    batch_size: images per batch (default: the config's evaluation batch).
    mesh: default: all devices.

  Returns:
    A JSON-able dict: 'workdir', 'model', 'label' ('ResNet-20'), 'step',
    'split', 'num_examples', 'definition', 'layers' (names, network order),
    'std' (Fig. 7, per layer), 'std_sorted' (descending), 'std_all', 'mean',
    'mean_abs' (per layer) and 'per_layer' (each layer's `LayerStats.to_json`,
    per-channel values included).
  """
  trained = workdir_files.read_config(workdir)
  config = config or trained
  if mesh is None:
    mesh = distributed.make_mesh()
  if data is None:
    data_lib.check_dataset(config.input)
  model, variables, norm, step, _, _ = _load_checkpoint(workdir, config, trained, mesh)
  dataset = _dataset_for(model, workdir, config, data)
  split = split or dataset.info.eval_split
  stats = responses.dataset_stats(
    model, variables, norm, dataset, split, mesh=mesh, batch_size=batch_size
  )
  return _responses_json(workdir, config, step, split, dataset.num_examples(split), stats)


def _load_checkpoint(workdir: str, config, trained, mesh):
  """`load_workdir` of `workdir` (replicated on `mesh`) for the data `config` names."""
  # The checkpoint is checked against the config's structure, which names the
  # dataset: load with the trained dataset name, read the data the config names.
  load_config = ml_collections.ConfigDict(config.to_dict())
  with load_config.unlocked():
    load_config.input.dataset = trained.input.dataset
  return trained_workdir.load_workdir(workdir, load_config, sharding=NamedSharding(mesh, P()))


def _dataset_for(model, workdir: str, config, data):
  """The dataset `config` names; a ConfigError unless it has the net's classes."""
  dataset = data_lib.create(config, preloaded=data)
  if model.num_classes != dataset.info.num_classes:
    raise errors.ConfigError(
      f'{workdir} predicts {model.num_classes} classes, '
      f'{config.input.dataset} has {dataset.info.num_classes}'
    )
  return dataset


def _responses_json(workdir: str, config, step, split: str, num_examples: int, stats) -> dict:
  """`workdir_responses`'s result from the per-layer `stats`."""
  layers = list(stats.values())
  std = [s.std for s in layers]
  return {
    'workdir': str(workdir),
    'model': config.model,
    'label': model_label(config.model),
    'step': int(step),
    'split': split,
    'num_examples': num_examples,
    'definition': responses.STD_DEFINITION,
    'layers': [s.name for s in layers],
    'std': std,
    'std_sorted': sorted(std, reverse=True),
    'std_all': [s.std_all for s in layers],
    'mean': [s.mean for s in layers],
    'mean_abs': [s.mean_abs for s in layers],
    'per_layer': [s.to_json() for s in layers],
  }


def plot_responses(results: list[dict], out: str, title: str | None = None):
  """Fig. 7: std by layer index (top) and sorted descending (bottom)."""
  # A Figure of its own (no pyplot): the caller's backend (e.g. a
  # notebook's inline one) is left alone.
  import matplotlib.ticker
  from matplotlib.figure import Figure

  fig = Figure(figsize=(7, 6.5))
  top, bottom = fig.subplots(2, 1)
  for i, r in enumerate(results):
    std = np.asarray(r['std'])
    x = np.arange(1, len(std) + 1)
    style = dict(
      color=f'C{i}', lw=1.2, marker='.', ms=3, ls='--' if 'plain' in r.get('model', '') else '-'
    )
    top.plot(x, std, label=r['label'], **style)
    bottom.plot(x, np.sort(std)[::-1], label=r['label'], **style)
  top.set_xlabel('layer index (original)')
  bottom.set_xlabel('layer index (sorted by magnitude)')
  for ax in (top, bottom):
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel('std')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    top.set_title(title)
  fig.tight_layout()
  fig.savefig(out, dpi=120)


def write_json(results: list[dict], path: str):
  with open(path, 'w') as f:
    json.dump({'definition': responses.STD_DEFINITION, 'results': results}, f, indent=1)


def read_json(path: str) -> list[dict]:
  """The results of an earlier run (`write_json`'s file)."""
  try:
    with open(path) as f:
      results = json.load(f)['results']
  except FileNotFoundError:
    raise errors.MissingError(f'--beside {path} does not exist') from None
  except (ValueError, KeyError, TypeError):
    raise errors.DataError(f'--beside {path} is not a Fig. 7 JSON file of this command') from None
  if not all(isinstance(r, dict) and {'label', 'std', 'step'} <= set(r) for r in results):
    raise errors.DataError(f'--beside {path} is not a Fig. 7 JSON file of this command')
  return results


def _distinct_labels(results: list[dict]):
  """Legend entries that tell the nets apart: the training length where
  the steps differ, else the workdir's name where labels repeat."""
  if len({r['step'] for r in results}) > 1:
    for r in results:
      r['label'] = f'{r["label"]} ({r["step"]:,} its.)'
  repeated = [r for r in results if [s['label'] for s in results].count(r['label']) > 1]
  for r in repeated:
    r['label'] = f'{r["label"]} ({os.path.basename(os.path.normpath(r["workdir"]))})'


def table(results: list[dict]) -> str:
  """A short table: model, number of layers, mean std over layers."""
  rows = ['| model | layers | mean std | mean std_all |', '| --- | --- | --- | --- |']
  rows += [
    f'| {r["label"]} | {len(r["std"])} | {np.mean(r["std"]):.4f} | {np.mean(r["std_all"]):.4f} |'
    for r in results
  ]
  return '\n'.join(rows)


def run(
  workdirs: list[str],
  out: str,
  json_path: str | None = None,
  *,
  data=None,
  data_dir: str | None = None,
  dataset: str | None = None,
  split: str | None = None,
  batch_size: int | None = None,
  labels: list[str] | None = None,
  beside: list[str] | None = None,
) -> list[dict]:
  """What the CLI does: responses of each workdir, the JSON, the plot, a table.

  `data`: preloaded CIFAR arrays for every workdir (tests, notebooks).
  `data_dir`, `dataset`: override each workdir config's `input` fields.
  `beside`: JSON files of earlier runs, whose results are drawn and listed
  after the workdirs' (read before any workdir is measured).
  Returns the per-workdir results (see `workdir_responses`), then `beside`'s.
  """
  if not workdirs:
    raise errors.ConfigError('give at least one --workdir')
  earlier = [r for path in beside or () for r in read_json(path)]
  results = []
  for workdir in workdirs:
    config = override_input(workdir_files.read_config(workdir), data_dir, dataset)
    results.append(workdir_responses(workdir, split, data, config, batch_size=batch_size))
  if labels:
    for r, label in zip(results, labels):
      r['label'] = label
  results += earlier
  if not labels:
    _distinct_labels(results)
  if jax.process_index() == 0:
    json_path = json_path or os.path.splitext(out)[0] + '.json'
    for path in (out, json_path):
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(results, json_path)
    plot_responses(results, out)
    print(table(results), flush=True)
    print(f'wrote {out} and {json_path}', flush=True)
  return results


def run_kwargs(values) -> dict:
  """Parsed flags -> keyword arguments of `run`; ConfigError if they do not fit."""
  if not values.workdir or not values.out:
    raise errors.ConfigError('--workdir (one or more) and --out are required')
  if values.label and len(values.label) != len(values.workdir):
    raise errors.ConfigError('give one --label per --workdir')
  return dict(
    workdirs=values.workdir,
    out=values.out,
    json_path=values.json,
    data_dir=values.data_dir,
    dataset=values.dataset,
    split=values.split,
    batch_size=values.batch_size,
    labels=values.label,
    beside=values.beside,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  run(**run_kwargs(FLAGS))


if __name__ == '__main__':
  cli.run(main)
