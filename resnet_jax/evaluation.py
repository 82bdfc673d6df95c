"""The paper's test protocols, on any checkpoint (sections 3.4, 4.1; Tables 2-5).

- `center`: one view per image (ImageNet: shorter side `eval.resize_size`,
  central `eval.crop_size` crop; CIFAR: the original image, section 4.2).
- `ten_crop`: the 4 corner crops of the whole resized image, the centre crop,
  and their flips; softmax scores averaged (see `data.imagenet_views.ten_crop_views`).
- `multi_scale`: the fully-convolutional form: whole images resized to each
  shorter side in `eval.scales`, and their flips; softmax scores averaged
  over scales and flips. Images of any aspect ratio are batched by padding to
  a few canvas shapes and masking (`models.ResNet(mask=...)`), which leaves
  the pooled features exactly those of the unpadded image.
- `ensemble`: several workdirs' scores (each its own model and config)
  averaged, as Table 5.

Every protocol scores every example of the split exactly once per view set,
whatever the batch size (padding is masked), and checks that it did. Scores
are accumulated on the host by example index, so one code path serves all.
Needs only a checkpoint: no optimizer, no training loop.
"""

import copy
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import (
  checkpointing,
  config_validation,
  distributed,
  errors,
  experiment,
  paths,
  progress,
  trained_workdir,
  workdir_files,
  workdir_lock,
)
from resnet_jax import data as data_lib
from resnet_jax.data import core as data_core

PROTOCOL_NAMES = {
  'center': '1-crop',
  'ten_crop': '10-crop',
  'multi_scale': 'multi-scale',
  'ensemble': 'ensemble',
}


class Scorer:
  """Softmax scores of batches of views, averaged per image, on a device mesh."""

  def __init__(self, model, dataset: data_lib.Dataset, mesh):
    self.model, self.dataset, self.mesh = model, dataset, mesh
    self.batch_sharding = NamedSharding(mesh, P('data'))
    self.replicated = NamedSharding(mesh, P())
    # Outputs replicated: every process sees every example's scores (a few
    # floats per image), so all processes agree on the metrics.
    self._fn = jax.jit(self._scores, out_shardings=self.replicated)

  def _scores(self, variables, norm, batch):
    images, b, v = data_core.flatten_views(batch['image'])
    x = self.dataset.preprocess_eval(images, norm)
    kwargs = {}
    if 'pixel_mask' in batch:
      kwargs['mask'] = jnp.repeat(batch['pixel_mask'], v, axis=0)
    logits = self.model.apply(variables, x, train=False, **kwargs)
    probs = jax.nn.softmax(logits.astype(jnp.float32)).reshape(b, v, -1).mean(1)
    return {'probs': probs, 'label': batch['label'], 'index': batch['index'], 'mask': batch['mask']}

  @property
  def num_devices(self):
    return self.mesh.devices.size

  def __call__(self, variables, norm, local_batch) -> dict:
    """Host numpy scores of this process's `local_batch` and all others'."""
    batch = distributed.to_global(local_batch, self.batch_sharding)
    return jax.device_get(self._fn(variables, norm, batch))


class Scores:
  """Per-example sums of softmax scores, accumulated by example index."""

  def __init__(self, num_examples: int, num_classes: int):
    self.total = np.zeros((num_examples, num_classes), np.float64)
    self.counter = data_core.ExampleCounter(num_examples)
    self.label = np.full((num_examples,), -1, np.int64)

  def add(self, out: dict):
    valid = self.counter.add(out)
    index = out['index'][valid]
    np.add.at(self.total, index, out['probs'][valid])
    self.label[index] = out['label'][valid]

  def probabilities(self, expected_count: int) -> np.ndarray:
    """Averaged scores; raises unless every example was scored as often as expected."""
    self.counter.check(expected_count, 'scored')
    return self.total / expected_count


def metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
  """Top-1 and top-5 error and the loss (NLL of the averaged scores)."""
  k = min(5, probs.shape[1])
  top5 = np.argpartition(-probs, k - 1, axis=1)[:, :k]
  p_true = probs[np.arange(len(labels)), labels]
  return {
    'top1_error': float(np.mean(probs.argmax(1) != labels)),
    'top5_error': float(np.mean(~(top5 == labels[:, None]).any(1))),
    'loss': float(np.mean(-np.log(np.maximum(p_true, 1e-12)))),
    'count': int(len(labels)),
  }


def _images_per_batch(config, views: int, view_pixels: int, num_devices: int) -> int:
  """Images per global batch: `input.eval_batch_size` crop-sized views' worth
  of pixels, a multiple of the device count (at least one image per device)."""
  budget = config.input.eval_batch_size * config.eval.crop_size**2
  per_device = max(1, budget // (views * view_pixels * num_devices))
  return per_device * num_devices


def images_per_batch(config, dataset, protocol: str, num_devices: int) -> int:
  """Images per global batch of the 'center' or 'ten_crop' protocol: CIFAR's
  `input.eval_batch_size`, ImageNet's pixel budget; a multiple of the devices."""
  if dataset.info.family == 'cifar':
    return max(1, config.input.eval_batch_size // num_devices) * num_devices
  crop = config.eval.crop_size
  return _images_per_batch(config, 1 if protocol == 'center' else 10, crop * crop, num_devices)


def protocol_scores(
  protocol: str, scorer: Scorer, variables, norm, dataset, split: str, config
) -> tuple[np.ndarray, np.ndarray]:
  """(averaged scores (N, C), labels (N,)) of every example of `split`."""
  num = dataset.num_examples(split)
  scores = Scores(num, scorer.model.num_classes)
  pcount, pindex = jax.process_count(), jax.process_index()
  if protocol in ('center', 'ten_crop'):
    per_batch = images_per_batch(config, dataset, protocol, scorer.num_devices)
    local = per_batch // pcount
    batches = dataset.eval_batches(split, protocol, local, pindex, pcount)
    total = data_core.eval_shard(num, pindex, pcount, local)[2]
    for batch in progress.progress(batches, total, f'eval {split} ({protocol})'):
      scores.add(scorer(variables, norm, batch))
    return scores.probabilities(1), scores.label
  if protocol != 'multi_scale':
    raise ValueError(f'unknown protocol {protocol!r}')
  if dataset.info.family != 'imagenet':
    raise ValueError('multi_scale is an ImageNet protocol')
  for scale in config.eval.scales:
    groups = dataset.multi_scale_groups(split, scale, pindex, pcount)
    plan = _agree_on_batches(groups, config, scorer)
    batches = (
      batch
      for canvas, num_batches, per_batch in plan
      for batch in dataset.multi_scale_batches(
        split,
        groups.get(canvas, np.zeros((0,), np.int64)),
        scale,
        canvas,
        per_batch // pcount,
        num_batches,
      )
    )
    total = sum(num_batches for _, num_batches, _ in plan)
    for batch in progress.progress(batches, total, f'eval {split} (multi_scale {scale})'):
      scores.add(scorer(variables, norm, batch))
  return scores.probabilities(len(config.eval.scales)), scores.label


def _agree_on_batches(groups: dict, config, scorer: Scorer) -> list:
  """[(canvas, num_batches, global images per batch)], the same on every process.

  Each process groups its own shard by canvas; all must run the same batches
  in the same order, so counts are agreed with an all-gather.
  """

  def plan(canvas, count):
    per_batch = _images_per_batch(config, 2, canvas[0] * canvas[1], scorer.num_devices)
    return per_batch, -(-count // (per_batch // jax.process_count()))

  mine = np.array(
    [[h, w, plan((h, w), len(idx))[1]] for (h, w), idx in sorted(groups.items())], np.int64
  ).reshape(-1, 3)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    longest = int(np.max(multihost_utils.process_allgather(np.int64(len(mine)))))
    padded = np.zeros((longest, 3), np.int64)
    padded[: len(mine)] = mine
    mine = multihost_utils.process_allgather(padded).reshape(-1, 3)
  agreed = {}
  for h, w, n in mine:
    if n > 0:
      agreed[(int(h), int(w))] = max(agreed.get((int(h), int(w)), 0), int(n))
  return [(canvas, n, plan(canvas, 0)[0]) for canvas, n in sorted(agreed.items())]


def evaluate_protocol(
  protocol: str, scorer: Scorer, variables, norm, dataset, split: str, config
) -> dict:
  """Top-1/top-5 error, loss and count of one model under one protocol."""
  probs, labels = protocol_scores(protocol, scorer, variables, norm, dataset, split, config)
  return {'split': split, **metrics(probs, labels)}


def evaluate_splits(scorer: Scorer, variables, norm, dataset, config, splits=None) -> dict:
  """The center protocol on every evaluation split (the held-out slice too),
  or on `splits`, as {'<split>_error', '<split>_top5_error', '<split>_loss'}:
  what training logs."""
  results = {}
  for split in dataset.eval_splits() if splits is None else splits:
    out = evaluate_protocol('center', scorer, variables, norm, dataset, split, config)
    results[f'{split}_error'] = out['top1_error']
    results[f'{split}_top5_error'] = out['top5_error']
    results[f'{split}_loss'] = out['loss']
  return results


def final_protocols(
  scorer: Scorer, variables, norm, dataset, config, last_eval: dict
) -> dict[str, dict]:
  """`eval.final_protocols` on the reported split at the end of training, by
  protocol name; the center one is taken from `last_eval` when it holds it."""
  split = dataset.info.eval_split
  out = {}
  for protocol in config.eval.final_protocols:
    if protocol == 'center' and f'{split}_error' in last_eval:
      out[protocol] = {
        'split': split,
        'top1_error': last_eval[f'{split}_error'],
        'top5_error': last_eval[f'{split}_top5_error'],
        'loss': last_eval[f'{split}_loss'],
        'count': dataset.num_examples(split),
      }
    else:
      out[protocol] = evaluate_protocol(protocol, scorer, variables, norm, dataset, split, config)
  return out


def check_ensemble(config: ml_collections.ConfigDict, dataset) -> list[tuple[str, object]]:
  """(workdir, its config) of each `eval.ensemble_workdirs` member, after
  checking, before anything is scored, that each holds a readable checkpoint
  of a net with the dataset's classes."""
  members = []
  for workdir in [w for w in str(config.eval.ensemble_workdirs).split(',') if w]:
    try:
      checkpointing.require_checkpoints(workdir)
      member = workdir_files.read_config(workdir)
    except errors.MissingError as e:
      raise errors.MissingError(
        f'ensemble member {workdir}: {e} List trained workdirs in --config.eval.ensemble_workdirs.'
      ) from e
    classes = experiment.model_from_config(member).num_classes
    if classes != dataset.info.num_classes:
      raise errors.ConfigError(
        f'ensemble member {workdir} predicts {classes} classes, {config.input.dataset} '
        f'has {dataset.info.num_classes}; list only members trained on it'
      )
    with checkpointing.manager(workdir, create=False) as mngr:
      if checkpointing.check_matches(mngr, member) is None:
        checkpointing.require_checkpoints(workdir, any_step=True)
    members.append((workdir, member))
  return members


def evaluate_ensemble(
  config: ml_collections.ConfigDict, dataset, mesh, split: str, members: list
) -> dict:
  """Averaged scores of the `check_ensemble` members (Table 5)."""
  replicated = NamedSharding(mesh, P())
  total, labels = 0.0, None
  for workdir, member in members:
    model, variables, norm, step, _, _ = trained_workdir.load_workdir(
      workdir, member, sharding=replicated
    )
    probs, labels = protocol_scores(
      config.eval.ensemble_protocol,
      Scorer(model, dataset, mesh),
      variables,
      norm,
      dataset,
      split,
      config,
    )
    total = total + probs
    print(
      f'  member {workdir} ({member.model}, step {step}): '
      f'{metrics(probs, labels)["top1_error"]:.2%} top-1 error',
      flush=True,
    )
  workdirs = [workdir for workdir, _ in members]
  return {'split': split, 'members': workdirs, **metrics(total / len(workdirs), labels)}


def ema_key(protocol: str) -> str:
  """The `eval.json` entry of a protocol's result with the weights' average."""
  return f'{protocol}_ema'


def table_row(config, protocol: str, result: dict) -> str:
  """One row in the paper's table format (errors in %)."""
  if protocol == 'ensemble':
    model = f'ensemble of {len(result["members"])}'
    detail = f'{PROTOCOL_NAMES[config.eval.ensemble_protocol]} each'
  else:
    shortcut = config.model_options.get('shortcut')
    model = config.model + (f' ({shortcut})' if shortcut else '')
    model += ', weights averaged (EMA)' if result.get('weights') == 'ema' else ''
    detail = f'scales {",".join(map(str, config.eval.scales))}' if protocol == 'multi_scale' else ''
  name = PROTOCOL_NAMES[protocol] + (f' ({detail})' if detail else '')
  return (
    f'| {model} | {name} | {100 * result["top1_error"]:.2f} | '
    f'{100 * result["top5_error"]:.2f} | {result["count"]} |'
  )


TABLE_HEADER = (
  '| model | testing | top-1 err. (%) | top-5 err. (%) | images |\n| --- | --- | --- | --- | --- |'
)


def record(workdir: str, config, protocol: str, result: dict, step: int, key: str | None = None):
  """Adds `result` to the workdir's `eval.json` (one entry per protocol, or
  under `key`) and prints it as a table row. Only process 0 writes."""
  if jax.process_index() != 0:
    return
  print(TABLE_HEADER + '\n' + table_row(config, protocol, result), flush=True)
  path = paths.workdir_path(workdir) / 'eval.json'
  results = json.loads(path.read_text()) if path.exists() else {}
  if results.get('step') != step or 'protocols' not in results:
    results = {'step': step, 'protocols': {}}
  results['protocols'][key or protocol] = result
  tmp = path.parent / 'eval.json.tmp'  # Written whole, then renamed over.
  with errors.writing(path):
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


def has_final_results(workdir, config, step: int) -> bool:
  """Whether `eval.json` holds every `eval.final_protocols` result of `step`."""
  path = paths.workdir_path(workdir) / 'eval.json'
  results = json.loads(path.read_text()) if path.exists() else {}
  done = results.get('protocols', {}) if results.get('step') == step else {}
  wanted = set(config.eval.final_protocols)
  if config.ema.decay:
    wanted |= {ema_key(protocol) for protocol in wanted}
  return wanted <= set(done)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, *, data=None) -> dict:
  """`--mode=evaluate`: `config.eval.protocol` on the workdir's latest checkpoint.

  `config` is the workdir's own (`workdir_files.read_config`) or the training
  config, with any overrides; only its evaluation fields are checked. Its
  dataset may be another than the one trained on if it has the same classes:
  by name (mapped onto the model's outputs, e.g. imagenette's 10 of
  ImageNet's 1000 classes), or, without names, by number. Reads no training
  data (the normalisation comes from the checkpoint). Writes the result into
  `eval.json` (under `protocol:dataset` for another dataset) and prints it as
  a row of the paper's tables.

  Returns:
    {'step', 'protocol', 'split', 'top1_error', 'top5_error', 'loss', 'count'}.
  """
  config_validation.validate_for_evaluation(config, jax.device_count())
  protocol = config.eval.protocol
  if protocol == 'ensemble':
    score = _ensemble_scoring(config, data)
  else:
    score = _checkpoint_scoring(config, workdir, data)
  workdir_files.prepare_workdir(workdir)  # eval.json goes there: writable before scoring.
  with workdir_lock.held(
    workdir, 'evaluation', is_holder=jax.process_index() == 0, agree=distributed.all_true
  ):
    step, key, result = score()
    record(workdir, config, protocol, {'dataset': config.input.dataset, **result}, step, key)
  return {'step': step, 'protocol': protocol, **result}


def _evaluation_dataset(config, data):
  """The config's dataset, checked for its evaluation split before any compile."""
  if data is None:
    data_lib.check_dataset(config.input)
  dataset = data_lib.create(config, preloaded=data)
  dataset.check_splits([dataset.info.eval_split])
  return dataset


def _ensemble_scoring(config, data):
  """Checks an ensemble's members; returns `() -> (None, key, result)`."""
  dataset = _evaluation_dataset(config, data)
  members = check_ensemble(config, dataset)

  def score():
    split = dataset.info.eval_split
    result = evaluate_ensemble(config, dataset, distributed.make_mesh(), split, members)
    return None, 'ensemble', result

  return score


def _checkpoint_scoring(config, workdir, data):
  """Checks the workdir and the dataset; returns `() -> (step, key, result)`
  for the workdir's latest checkpoint."""
  checkpointing.require_checkpoints(workdir)  # The workdir first: it is the likelier typo.
  trained = workdir_files.read_config(workdir)
  dataset = _evaluation_dataset(config, data)

  def score():
    mesh = distributed.make_mesh()
    other_dataset = trained.input.dataset != config.input.dataset
    loaded = trained_workdir.load_workdir(
      workdir,
      _as_trained(config, trained) if other_dataset else config,
      sharding=NamedSharding(mesh, P()),
      ema=config.eval.ema,
    )
    scored, key = dataset, config.eval.protocol
    if config.eval.ema:
      key = ema_key(key)
    if other_dataset:
      scored = _relabeled(dataset, loaded, trained.input.dataset)
      key = f'{key}:{config.input.dataset}'
    result = evaluate_protocol(
      config.eval.protocol,
      Scorer(loaded.model, scored, mesh),
      loaded.variables,
      loaded.norm,
      scored,
      dataset.info.eval_split,
      config,
    )
    if config.eval.ema:
      result['weights'] = 'ema'
    return loaded.step, key, result

  return score


def _as_trained(config, trained) -> ml_collections.ConfigDict:
  """`config` naming the dataset (and classes) the checkpoint was trained on,
  which is what the checkpoint's own record is checked against."""
  config = copy.deepcopy(config)
  config.input.dataset, config.input.data_dir = trained.input.dataset, trained.input.data_dir
  config.model_options.num_classes = experiment.model_from_config(trained).num_classes
  return config


def _relabeled(dataset, loaded, trained_on: str):
  """`dataset` with its labels mapped onto the model's outputs (by class
  name), or as is when it has the model's classes; ConfigError otherwise."""
  info, names, outputs = dataset.info, loaded.class_names, loaded.model.num_classes
  if info.class_names and names and tuple(info.class_names) != tuple(names):
    unknown = [name for name in info.class_names if name not in names]
    if unknown:
      raise errors.ConfigError(
        f'{info.name} has classes the model (trained on {trained_on}) does not predict, '
        f'e.g. {unknown[0]!r}; evaluate on a dataset of its classes'
      )
    label_map = np.array([names.index(name) for name in info.class_names], np.int32)
    if jax.process_index() == 0:
      print(
        f"Scoring {info.name}'s {info.num_classes} classes as the model's classes of the same "
        f'names (of its {outputs}, trained on {trained_on})',
        flush=True,
      )
    return _Relabeled(dataset, label_map)
  if info.num_classes != outputs:
    raise errors.ConfigError(
      f'{info.name} has {info.num_classes} classes, the model (trained on {trained_on}) '
      f'predicts {outputs}; evaluate on a dataset with the same classes'
    )
  return dataset


class _Relabeled:
  """A dataset whose evaluation labels are mapped onto the model's outputs."""

  def __init__(self, dataset, label_map: np.ndarray):
    self._dataset, self._map = dataset, label_map

  def __getattr__(self, name):
    return getattr(self._dataset, name)

  def _mapped(self, batches):
    for batch in batches:
      yield {**batch, 'label': self._map[np.asarray(batch['label'])]}

  def eval_batches(self, *args, **kwargs):
    return self._mapped(self._dataset.eval_batches(*args, **kwargs))

  def multi_scale_batches(self, *args, **kwargs):
    return self._mapped(self._dataset.multi_scale_batches(*args, **kwargs))
