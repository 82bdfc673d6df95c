"""Layer responses of trained nets: the statistics of the paper's Fig. 7.

    python -m resnet_jax.responses --workdir=runs/plain20 --workdir=runs/resnet20 \
        --out=fig7.png [--json=fig7.json] [--data_dir=../shared/data/tfds]

Fig. 7 plots the standard deviation of the "layer responses": the output of
each 3x3 layer after its BN and before the other nonlinearity (ReLU or the
addition), on the CIFAR-10 test set, by layer index in network order (top)
and sorted in descending order (bottom). The models sow exactly these
(`models.BasicBlock`/`BottleneckBlock`: 'response1', 'response2').

What "the std of a layer" is. The paper does not define it. A layer's
response is a (examples, height, width, channels) array; we take, for each
channel, the std over examples x positions (population std, ddof=0), and
average it over the channels (`LayerStats.std`, the number plotted). This is
the usual reading of Fig. 7 (a per-unit std; a channel is a unit of a conv
layer, shared over positions) and the one the brief for this module fixed.
It measures how strongly each unit responds, ignoring per-channel offsets
(BN's beta), whereas the std over all elements of the layer (`std_all`, also
returned) adds the spread of the channel means to it. Per channel we also
return the mean and the mean absolute value, and per layer the mean, the mean
absolute value and `std_all`.

The statistics stream: each batch runs through one jitted, mesh-sharded
(batch over 'data') pass that reduces every named activation to per-channel
(count, sum, centred sum of squares, sum of |x|), replicated; the host merges
them into float64 accumulators. Memory is independent of the split size (per
layer, a few vectors of channels) apart from one int32 per example to check
that every example of the split was counted exactly once (as
`evaluation.Scores` does). Padding examples (mask 0) never count, nor, for
multi-size canvases (`pixel_mask`, see `models.ResNet`), positions outside
each image (the model does not zero its responses there).

Beyond Fig. 7, `collect` gives the same statistics for any module output a
researcher names with a regex on module paths (flax `capture_intermediates`),
e.g. 'stage2_block1/bn1' or '.*/conv1'; scanned stages are unstacked into
'stageI_blockJ/...' names.

The plot needs matplotlib (`pip install -e ".[notebooks]"`).
"""

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import checkpointing, data as data_lib, errors, models

STD_DEFINITION = ('per-channel std over examples x positions (population, ddof=0), '
                  'averaged over channels; std_all: std over all elements of the layer')

_STAGE_BLOCK = re.compile(r'^stage(\d+)_block(\d+)$')
_STAGE_REST = re.compile(r'^stage(\d+)_rest$')


# ----------------------------------------------------------------------------
# Naming the activations.


def named_responses(intermediates) -> list[tuple[str, jax.Array]]:
  """The sown Fig. 7 responses, in network order, with their layer names.

  Args:
    intermediates: the `intermediates` collection of
      `model.apply(..., mutable=['intermediates'])`.

  Returns:
    [('stage1_block1/response1', (B, H, W, C) array), ...]: the same arrays in
    the same order as `models.layer_responses`; a scanned stage's stacked
    responses ('stageI_rest', axis 0) become 'stageI_block2', 'stageI_block3', ...
  """
  blocks = []  # (stage, block, name, {response: array})
  for key, value in intermediates.items():
    if (m := _STAGE_BLOCK.match(key)):
      blocks.append((int(m[1]), int(m[2]), key,
                     {k: v[0] for k, v in value.items() if k.startswith('response')}))
    elif (m := _STAGE_REST.match(key)):
      stacked = {k: v[0] for k, v in value.items() if k.startswith('response')}
      if not stacked:
        continue
      length = next(iter(stacked.values())).shape[0]
      for j in range(length):
        blocks.append((int(m[1]), j + 2, f'stage{m[1]}_block{j + 2}',
                       {k: v[j] for k, v in stacked.items()}))
  out = []
  for _, _, name, responses in sorted(blocks, key=lambda b: b[:2]):
    out.extend((f'{name}/{k}', responses[k]) for k in sorted(responses))
  return out


def response_names(model: models.ResNet) -> list[str]:
  """The names `named_responses` gives `model`'s responses, in network order."""
  keys = ('response1', 'response2') if model.block_cls is models.BasicBlock else ('response2',)
  return [f'stage{i + 1}_block{j + 1}/{k}' for i, n in enumerate(model.stage_sizes)
          for j in range(n) for k in keys]


def _name_filter(names) -> Callable[[str], bool]:
  """A predicate on activation names: a regex (full match), a callable, or a
  list of exact names."""
  if callable(names):
    return names
  if isinstance(names, str):
    pattern = re.compile(names)
    return lambda name: pattern.fullmatch(name) is not None
  wanted = set(names)
  return lambda name: name in wanted


def _module_name(mdl, method_name: str) -> str | None:
  """The name of a module call's output: its path ('stage1_block1/bn1'), the
  root's 'output'; None for calls that are not `__call__`."""
  if method_name != '__call__':
    return None
  return '/'.join(mdl.path) or 'output'


def _unscanned(name: str, stage_sizes) -> list[str]:
  """The per-block names of a (possibly) scanned module path: 'stage1_rest/bn1'
  -> ['stage1_block2/bn1', 'stage1_block3/bn1', ...]; other names as they are."""
  head, sep, tail = name.partition('/')
  m = _STAGE_REST.match(head)
  if not m:
    return [name]
  stage = int(m[1])
  rest = stage_sizes[stage - 1] - 1 if stage <= len(stage_sizes) else 0
  return [f'stage{stage}_block{j + 2}{sep}{tail}' for j in range(rest)]


class _Capture:
  """Which module outputs to capture, and their order (recorded while tracing).

  flax calls the capture filter after each module call, in call order (a
  module after its submodules), so the order of first calls is network order.
  Scanned stages are traced once per stage (flax may trace a body twice; the
  first sighting counts) and unstacked block-major.
  """

  def __init__(self, names, stage_sizes):
    self.wanted = _name_filter(names)
    self.stage_sizes = tuple(stage_sizes)
    self.order = []  # Module paths (scanned ones as 'stageI_rest/...'), call order.
    self._seen = set()

  def __call__(self, mdl, method_name) -> bool:
    name = _module_name(mdl, method_name)
    if name is None or not any(self.wanted(n) for n in _unscanned(name, self.stage_sizes)):
      return False
    if name not in self._seen:
      self._seen.add(name)
      self.order.append(name)
    return True

  def extract(self, intermediates) -> list[tuple[str, jax.Array]]:
    """[(name, array)] of the captured outputs, in network order, scanned ones
    unstacked. A module called several times: its first call. A pytree output
    (the scanned block's (carry, None)): its first array."""
    runs = []  # [(stage-rest head or None, [paths])]: consecutive scanned paths grouped.
    for path in self.order:
      head = path.split('/')[0]
      scanned = head if _STAGE_REST.match(head) else None
      if scanned and runs and runs[-1][0] == scanned:
        runs[-1][1].append(path)
      else:
        runs.append((scanned, [path]))
    out = []
    for scanned, paths in runs:
      values = {p: self._value(intermediates, p) for p in paths}
      if scanned is None:
        out.extend((p, values[p]) for p in paths)
        continue
      per_path = {p: _unscanned(p, self.stage_sizes) for p in paths}
      length = len(per_path[paths[0]])
      for j in range(length):
        for p in paths:
          if self.wanted(per_path[p][j]):
            out.append((per_path[p][j], values[p][j]))
    return out

  @staticmethod
  def _value(intermediates, path):
    node = intermediates
    for part in ([] if path == 'output' else path.split('/')):
      node = node[part]
    leaves = [x for x in jax.tree.leaves(node['__call__'][0]) if hasattr(x, 'shape')]
    if not leaves:
      raise ValueError(f'module {path!r} returned no array')
    return leaves[0]


# ----------------------------------------------------------------------------
# Per-batch moments on the device.


def _channel_moments(y, example_mask, pixel_mask=None) -> dict:
  """Masked per-channel moments of `y` over one batch, shifted and centred.

  y: (B, ..., C); example_mask: (B,); pixel_mask: (B, H, W) at the input
  resolution, used when y is (B, h, w, C) (subsampled to h, w as the model's
  stride-2 layers do).

  Returns {'count': valid elements per channel, 'shift' (C,): one valid value
  per channel K, 'sum' (C,): sum of (y - K), 'm2' (C,): sum of (y - mean)^2,
  'sum_abs' (C,): sum of |y|}, float32 (see `ResponseStats` for precision).
  """
  y = y.astype(jnp.float32)
  valid = example_mask.astype(bool).reshape((y.shape[0],) + (1,) * (y.ndim - 2))
  if pixel_mask is not None and y.ndim == 4:
    valid = valid & models._mask_at(pixel_mask.astype(bool), y.shape[1:3])
  valid = jnp.broadcast_to(valid, y.shape[:-1])
  count = valid.sum(dtype=jnp.int32)
  # The shift: the first valid example's first position (top-left, always
  # inside its pixel mask), so y - K is of the size of the spread, not of the
  # mean, and its float32 sums lose nothing to a large offset.
  first = jnp.argmax(example_mask > 0)
  shift = jax.lax.dynamic_index_in_dim(y, first, 0, keepdims=False).reshape(-1, y.shape[-1])[0]
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  valid = valid[..., None]
  axes = tuple(range(1, y.ndim - 1))

  def total(v):  # Per example first, then over the batch: shorter float32 sums.
    return jnp.where(valid, v, 0.0).sum(axis=axes).sum(axis=0)

  d = y - shift
  s = total(d)
  # Centred at the batch mean (a second pass): no sum(x^2) - n mean^2 cancellation.
  m2 = total(jnp.square(d - s / jnp.maximum(count, 1).astype(jnp.float32)))
  return {'count': count, 'shift': shift, 'sum': s, 'm2': m2, 'sum_abs': total(jnp.abs(y))}


def _pad_to_multiple(batch: dict, multiple: int) -> dict:
  """Pads a host batch with masked-out examples to a multiple of `multiple`."""
  b = len(batch['mask'])
  extra = -b % multiple
  if not extra:
    return batch
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    fill = -1 if k == 'index' else 0
    out[k] = np.concatenate([v, np.full((extra,) + v.shape[1:], fill, v.dtype)])
  return out


class ResponseMeter:
  """Per-channel moments of a model's named activations, batch by batch.

  One jitted pass per batch on a device mesh, as `evaluation.Scorer`: the
  batch sharded over 'data', the outputs (per-channel sums, the batch's mask
  and indices) replicated, so every process sees the global statistics.

  Args:
    model: a `models.ResNet` (any flax module taking (x, train, mask=)).
    mesh: a mesh with a 'data' axis (default: `train.make_mesh()`, all devices).
    names: None for the Fig. 7 responses (`named_responses`); else which module
      outputs to capture: a regex fully matching names such as
      'stage2_block1/bn1' (scanned stages named per block), a callable on
      names, or a list of names.
    preprocess: (uint8 images, norm) -> network input; default
      `data.normalize` (what both dataset families' `preprocess_eval` do), or
      the images as float32 if `norm` is None.
  """

  def __init__(self, model, mesh=None, names=None, preprocess=None):
    if mesh is None:
      from resnet_jax import train  # The mesh factory (train imports much).
      mesh = train.make_mesh()
    self.model, self.mesh = model, mesh
    self.batch_sharding = NamedSharding(mesh, P('data'))
    self.replicated = NamedSharding(mesh, P())
    self.preprocess = preprocess or data_lib.normalize
    self.capture = None if names is None else _Capture(names, getattr(model, 'stage_sizes', ()))
    self.names = None  # Known once the first batch was traced.
    self._fn = jax.jit(self._moments, out_shardings=self.replicated)

  BATCH_KEYS = ('image', 'mask', 'index', 'pixel_mask')  # What the device reads.

  def _moments(self, variables, norm, batch):
    images, _, v = data_lib.flatten_views(batch['image'])
    x = images.astype(jnp.float32) if norm is None else self.preprocess(images, norm)
    example_mask = jnp.repeat(batch['mask'], v, axis=0)
    pixel_mask = batch.get('pixel_mask')
    kwargs = {}
    if pixel_mask is not None:
      pixel_mask = jnp.repeat(pixel_mask, v, axis=0)
      kwargs['mask'] = pixel_mask
    if self.capture is None:
      _, state = self.model.apply(variables, x, train=False, mutable=['intermediates'],
                                  **kwargs)
      named = named_responses(state['intermediates'])
    else:
      _, state = self.model.apply(variables, x, train=False, mutable=['intermediates'],
                                  capture_intermediates=self.capture, **kwargs)
      named = self.capture.extract(state['intermediates'])
    if not named:
      raise ValueError('no activation matched: check `names` against the module paths '
                       "(e.g. 'stage1_block1/bn1', scanned stages as 'stage1_block2/...')")
    names = [n for n, _ in named]
    if self.names is None:
      self.names = names
    elif self.names != names:
      raise AssertionError(f'activations changed between traces: {self.names} vs {names}')
    # A list, not a dict: jax returns dicts with sorted keys, not network order.
    moments = [_channel_moments(y, example_mask, pixel_mask) for _, y in named]
    return {'moments': moments, 'mask': batch['mask'], 'index': batch['index']}

  def dispatch(self, variables, norm, local_batch):
    """Starts one global batch (`local_batch`: this process's share, padded
    here to a multiple of the local devices); returns device arrays."""
    local_batch = {k: np.asarray(local_batch[k]) for k in self.BATCH_KEYS if k in local_batch}
    local_batch.setdefault('index', np.full(len(local_batch['mask']), -1, np.int32))
    local_batch = _pad_to_multiple(local_batch, jax.local_device_count())
    batch = jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), local_batch)
    # A no-op once they are replicated on the mesh (`_stream` puts them once).
    variables, norm = jax.device_put((variables, norm), self.replicated)
    return self._fn(variables, norm, batch)

  def fetch(self, out) -> dict:
    """Host numpy {'moments': {name: moments} in network order, 'mask', 'index'}."""
    out = jax.device_get(out)
    out['moments'] = dict(zip(self.names, out['moments']))
    return out

  def __call__(self, variables, norm, local_batch) -> dict:
    """`fetch(dispatch(...))`: the moments of one global batch on the host."""
    return self.fetch(self.dispatch(variables, norm, local_batch))


# ----------------------------------------------------------------------------
# Streaming statistics on the host.


@dataclasses.dataclass
class LayerStats:
  """The statistics of one activation over a whole split.

  `std` is Fig. 7's number: the per-channel std averaged over channels (see
  the module docstring); `std_all` the std over all elements; `mean`,
  `mean_abs` over all elements. `channel_*`: per channel. `count`: elements
  per channel (examples x positions); `sum`, `sum_sq`, `sum_abs`: per-channel
  float64 sums (`sum_sq` recovered from the centred sums).
  """
  name: str
  count: int
  sum: np.ndarray
  sum_sq: np.ndarray
  sum_abs: np.ndarray
  channel_mean: np.ndarray
  channel_std: np.ndarray
  channel_mean_abs: np.ndarray
  std: float
  std_all: float
  mean: float
  mean_abs: float

  def to_json(self, per_channel: bool = True) -> dict:
    out = {'name': self.name, 'count': self.count, 'std': self.std, 'std_all': self.std_all,
           'mean': self.mean, 'mean_abs': self.mean_abs}
    if per_channel:
      out.update(channel_std=self.channel_std.tolist(), channel_mean=self.channel_mean.tolist(),
                 channel_mean_abs=self.channel_mean_abs.tolist())
    return out


class ResponseStats:
  """Streaming per-layer, per-channel statistics over a split.

  Precision (why not float32 running sums): a split gives ~10M terms per
  channel (CIFAR test, 32x32), and float32 sums of that many values, or the
  E[x^2] - E[x]^2 of them, would be dominated by rounding when the mean is
  large next to the std. So each batch arrives as float32 per-channel sums
  over at most one batch of elements, shifted by one of the batch's own
  values (sum of y - K: no large offset) and with the second moment centred
  at the batch mean (a second pass on the device). Batches are merged here
  in float64 with the pairwise update of Chan et al. (1979),
  M2 = M2_a + M2_b + (mean_a - mean_b)^2 n_a n_b / (n_a + n_b), so the error
  does not grow with the number of batches, and memory stays a few
  vectors per layer.
  """

  def __init__(self):
    self._acc = {}  # name -> [count, sum, m2, sum_abs] (int, float64 (C,) arrays)
    self.names = []  # In the order first seen (network order).

  def add(self, moments: dict):
    """Merges one batch's {name: `_channel_moments` output} (numpy)."""
    for name, m in moments.items():
      n_b = int(m['count'])
      if name not in self._acc:
        self.names.append(name)
        c = np.shape(m['sum'])[-1]
        self._acc[name] = [0, np.zeros(c), np.zeros(c), np.zeros(c)]
      if n_b == 0:
        continue
      acc = self._acc[name]
      n_a, s_a, m2_a, abs_a = acc
      s_b = (np.asarray(m['sum'], np.float64) +
             n_b * np.asarray(m.get('shift', 0.0), np.float64))
      m2_b = np.asarray(m['m2'], np.float64)
      n = n_a + n_b
      if n_a:
        delta = s_a / n_a - s_b / n_b
        m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
      else:
        m2 = m2_b
      acc[:] = [n, s_a + s_b, m2, abs_a + np.asarray(m['sum_abs'], np.float64)]

  def layer(self, name: str) -> LayerStats:
    n, s, m2, sum_abs = self._acc[name]
    if n == 0:
      raise ValueError(f'no valid element of {name!r} was seen')
    channel_mean = s / n
    channel_var = np.maximum(m2, 0.0) / n
    mean = float(channel_mean.mean())  # Every channel has the same count.
    # Total M2 = within-channel + between-channel parts.
    var_all = float((m2.sum() + n * np.square(channel_mean - mean).sum()) / (n * len(s)))
    return LayerStats(
        name=name, count=int(n), sum=s.copy(), sum_sq=m2 + s * s / n, sum_abs=sum_abs.copy(),
        channel_mean=channel_mean, channel_std=np.sqrt(channel_var),
        channel_mean_abs=sum_abs / n, std=float(np.sqrt(channel_var).mean()),
        std_all=math.sqrt(max(var_all, 0.0)), mean=mean,
        mean_abs=float((sum_abs / n).mean()))

  def result(self) -> dict[str, LayerStats]:
    """{name: LayerStats}, in network order."""
    return {name: self.layer(name) for name in self.names}


class _ExampleCounter:
  """Checks that every example of a split was counted once (by index)."""

  def __init__(self, num_examples: int | None):
    self.num_examples = num_examples
    self.count = None if num_examples is None else np.zeros(num_examples, np.int32)
    self.total = 0

  def add(self, out):
    valid = np.asarray(out['mask']) > 0
    self.total += int(valid.sum())
    if self.count is not None:
      index = np.asarray(out['index'])[valid]
      if index.size and (index.min() < 0 or index.max() >= self.num_examples):
        raise AssertionError(f'example index out of range [0, {self.num_examples}): '
                             f'{index.min()}..{index.max()}')
      np.add.at(self.count, index, 1)

  def check(self):
    if self.count is None:
      return
    wrong = np.flatnonzero(self.count != 1)
    if wrong.size:
      raise AssertionError(
          f'{wrong.size} examples were counted {sorted(set(self.count[wrong].tolist()))} '
          f'times, expected once (e.g. example {wrong[0]})')


def _stream(meter: ResponseMeter, variables, batches: Iterable[dict], norm,
            num_examples: int | None) -> dict[str, LayerStats]:
  stats, counter = ResponseStats(), _ExampleCounter(num_examples)
  variables, norm = jax.device_put((variables, norm), meter.replicated)
  pending = None  # One batch in flight while the host merges the previous one.
  for batch in batches:
    out = meter.dispatch(variables, norm, batch)
    if pending is not None:
      _merge(meter.fetch(pending), stats, counter)
    pending = out
  if pending is None:
    raise ValueError('no batches')
  _merge(meter.fetch(pending), stats, counter)
  counter.check()
  return stats.result()


def _merge(out, stats, counter):
  counter.add(out)
  stats.add(out['moments'])


def response_stats(model, variables, batches: Iterable[dict], norm=None, *, mesh=None,
                   preprocess=None, num_examples: int | None = None) -> dict[str, LayerStats]:
  """Fig. 7 statistics of every 3x3 layer's response over `batches`.

  Args:
    model, variables: a `models.ResNet` and its {'params', 'batch_stats'}.
    batches: host batches {'image' uint8 (B, [V,] H, W, 3), 'mask' (B,) (0:
      padding), optional 'index' (B,) (-1: padding), optional 'pixel_mask'
      (B, H, W)}, e.g. `Dataset.eval_batches(...)`; any batch size (padded to
      a multiple of the local devices).
    norm: the checkpoint's {'mean', 'std'}; None feeds the images as they are.
    mesh: see `ResponseMeter`.
    preprocess: see `ResponseMeter`.
    num_examples: if given, checks that each index in [0, num_examples) was
      counted exactly once.

  Returns:
    {'stage1_block1/response1': LayerStats, ...} in network order.
  """
  meter = ResponseMeter(model, mesh, None, preprocess)
  return _stream(meter, variables, batches, norm, num_examples)


def collect(model, variables, batches: Iterable[dict], norm=None, names=None, *,
            mesh=None, preprocess=None, num_examples: int | None = None) -> dict[str, LayerStats]:
  """The same streaming statistics for any module outputs named by `names`.

  `names` matches module paths ('stage2_block1/bn1', '.*/conv1'; the root's
  output is 'output'; a regex must match the whole name), a callable on names
  or a list of names. Scanned stages are named per block ('stage1_block2/bn1'
  although blocks 2.. are one `nn.scan` whose outputs are stacked). None: the
  sown Fig. 7 responses (as `response_stats`). Other arguments as
  `response_stats`. Returns {name: LayerStats} in network order (a module
  after its submodules).
  """
  meter = ResponseMeter(model, mesh, names, preprocess)
  return _stream(meter, variables, batches, norm, num_examples)


def eval_batch_size(config, dataset, num_devices: int) -> int:
  """Images per global batch, as `evaluation` picks them for the center view."""
  from resnet_jax import evaluation
  if dataset.info.family == 'cifar':
    return max(1, config.input.eval_batch_size // num_devices) * num_devices
  crop = config.eval.crop_size
  return evaluation._images_per_batch(config, 1, crop * crop, num_devices)


def dataset_stats(model, variables, norm, dataset, split: str, *, mesh=None,
                  batch_size: int | None = None, names=None) -> dict[str, LayerStats]:
  """Statistics over every example of a dataset's split (center view).

  `batch_size`: images per global batch (default: the config's evaluation
  batch); rounded up to a multiple of the devices. `names`: None for the
  Fig. 7 responses, else as `collect`.
  """
  meter = ResponseMeter(model, mesh, names, dataset.preprocess_eval)
  ndev = meter.mesh.devices.size
  per_batch = batch_size or eval_batch_size(dataset.config, dataset, ndev)
  per_batch = -(-per_batch // ndev) * ndev
  pcount, pindex = jax.process_count(), jax.process_index()
  batches = dataset.eval_batches(split, 'center', per_batch // pcount, pindex, pcount)
  return _stream(meter, variables, batches, norm, dataset.num_examples(split))


# ----------------------------------------------------------------------------
# Workdirs, the plot, the CLI.


def model_label(model_name: str) -> str:
  """The paper's name of a model: 'cifar_resnet20' -> 'ResNet-20',
  'cifar_plain56' -> 'plain-56', 'resnet50' -> 'ResNet-50'."""
  m = re.fullmatch(r'(?:cifar_)?(resnet|plain)(\d+)', model_name)
  if not m:
    return model_name
  return f'{"ResNet" if m[1] == "resnet" else "plain"}-{m[2]}'


def override_input(config: ml_collections.ConfigDict, data_dir: str | None = None,
                   dataset: str | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` reading its data from `data_dir` / `dataset` where given."""
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    if data_dir is not None:
      config.input.data_dir = data_dir
    if dataset is not None:
      if dataset not in data_lib.DATASETS:
        raise errors.ConfigError(f'unknown dataset {dataset!r}; valid: {sorted(data_lib.DATASETS)}')
      config.input.dataset = dataset
  return config


def workdir_responses(workdir: str, split: str | None = None, data=None,
                      config: ml_collections.ConfigDict | None = None, *,
                      batch_size: int | None = None, mesh=None) -> dict:
  """Fig. 7 statistics of a trained workdir's latest checkpoint.

  Args:
    workdir: a training workdir.
    split: default: the dataset's evaluation split (CIFAR: test).
    data: optional preloaded CIFAR `(train, {name: split})` (tests, notebooks).
    config: default: the workdir's own (`checkpointing.read_config`); its
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
  trained = checkpointing.read_config(workdir)
  config = config or trained
  if mesh is None:
    from resnet_jax import train
    mesh = train.make_mesh()
  # The checkpoint is checked against the config's structure, which names the
  # dataset: load with the trained dataset name, read the data the config names.
  load_config = ml_collections.ConfigDict(config.to_dict())
  with load_config.unlocked():
    load_config.input.dataset = trained.input.dataset
  if data is None:
    data_lib.check_dataset(config.input.dataset, config.input.data_dir)
  model, variables, norm, step = checkpointing.load_variables(
      workdir, load_config, sharding=NamedSharding(mesh, P()))
  dataset = data_lib.create(config, preloaded=data)
  if model.num_classes != dataset.info.num_classes:
    raise errors.ConfigError(f'{workdir} predicts {model.num_classes} classes, '
                             f'{config.input.dataset} has {dataset.info.num_classes}')
  split = split or dataset.info.eval_split
  stats = dataset_stats(model, variables, norm, dataset, split, mesh=mesh,
                        batch_size=batch_size)
  layers = list(stats.values())
  std = [s.std for s in layers]
  return {
      'workdir': str(workdir), 'model': config.model, 'label': model_label(config.model),
      'step': int(step), 'split': split, 'num_examples': dataset.num_examples(split),
      'definition': STD_DEFINITION, 'layers': [s.name for s in layers], 'std': std,
      'std_sorted': sorted(std, reverse=True), 'std_all': [s.std_all for s in layers],
      'mean': [s.mean for s in layers], 'mean_abs': [s.mean_abs for s in layers],
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
    style = dict(color=f'C{i}', lw=1.2, marker='.', ms=3,
                 ls='--' if 'plain' in r.get('model', '') else '-')
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
    json.dump({'definition': STD_DEFINITION, 'results': results}, f, indent=1)


def table(results: list[dict]) -> str:
  """A short table: model, number of layers, mean std over layers."""
  rows = ['| model | layers | mean std | mean std_all |', '| --- | --- | --- | --- |']
  rows += [f'| {r["label"]} | {len(r["std"])} | {np.mean(r["std"]):.4f} | '
           f'{np.mean(r["std_all"]):.4f} |' for r in results]
  return '\n'.join(rows)


def run(workdirs: list[str], out: str, json_path: str | None = None, *, data=None,
        data_dir: str | None = None, dataset: str | None = None, split: str | None = None,
        batch_size: int | None = None, labels: list[str] | None = None) -> list[dict]:
  """What the CLI does: responses of each workdir, the JSON, the plot, a table.

  `data`: preloaded CIFAR arrays for every workdir (tests, notebooks).
  `data_dir`, `dataset`: override each workdir config's `input` fields.
  Returns the per-workdir results (see `workdir_responses`).
  """
  if not workdirs:
    raise errors.ConfigError('give at least one --workdir')
  results = []
  for workdir in workdirs:
    config = override_input(checkpointing.read_config(workdir), data_dir, dataset)
    results.append(workdir_responses(workdir, split, data, config, batch_size=batch_size))
  for i, r in enumerate(results):  # Distinct legend entries.
    if labels:
      r['label'] = labels[i]
    elif [s['label'] for s in results].count(r['label']) > 1:
      r['label'] = f'{r["label"]} ({os.path.basename(os.path.normpath(r["workdir"]))})'
  if jax.process_index() == 0:
    json_path = json_path or os.path.splitext(out)[0] + '.json'
    for path in (out, json_path):
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(results, json_path)
    plot_responses(results, out)
    print(table(results), flush=True)
    print(f'wrote {out} and {json_path}', flush=True)
  return results


def _define_flags(flag_values):
  from absl import flags
  flags.DEFINE_multi_string('workdir', None, 'A training workdir (repeat for several).',
                            flag_values=flag_values)
  flags.DEFINE_string('out', None, 'The figure (png).', flag_values=flag_values)
  flags.DEFINE_string('json', None, 'The numbers (default: --out with a .json suffix).',
                      flag_values=flag_values)
  flags.DEFINE_string('data_dir', None, "Overrides each workdir config's input.data_dir "
                      '(e.g. ../shared/data/tfds).', flag_values=flag_values)
  flags.DEFINE_string('dataset', None, "Overrides each workdir config's input.dataset.",
                      flag_values=flag_values)
  flags.DEFINE_string('split', None, 'Default: the evaluation split (CIFAR: test).',
                      flag_values=flag_values)
  flags.DEFINE_integer('batch_size', None, "Images per batch (default: the config's "
                       'eval_batch_size).', flag_values=flag_values)
  flags.DEFINE_multi_string('label', None, 'Legend labels, one per --workdir (default: '
                            "the model's name, e.g. ResNet-20).", flag_values=flag_values)


def parse_flags(argv: list[str]) -> dict:
  """The CLI's arguments as keyword arguments of `run`.

  The flags live on their own `FlagValues`, not absl's global one, so this
  module imports next to `resnet_jax.main` (which defines --workdir too).
  """
  from absl import flags
  values = flags.FlagValues()
  _define_flags(values)
  rest = values(argv)
  if len(rest) > 1:
    raise errors.ConfigError(f'unexpected arguments: {rest[1:]}')
  if not values.workdir or not values.out:
    raise errors.ConfigError('--workdir (one or more) and --out are required')
  if values.label and len(values.label) != len(values.workdir):
    raise errors.ConfigError('give one --label per --workdir')
  return dict(workdirs=values.workdir, out=values.out, json_path=values.json,
              data_dir=values.data_dir, dataset=values.dataset, split=values.split,
              batch_size=values.batch_size, labels=values.label)


def main(argv: list[str] | None = None):
  with errors.one_line_errors():
    run(**parse_flags(sys.argv if argv is None else argv))


if __name__ == '__main__':
  main()
