"""Layer responses of trained nets: the statistics of the paper's Fig. 7.

The figure itself comes from `research.fig7`:

    python -m resnet_jax.research.fig7 --workdir=runs/plain20 --workdir=runs/resnet20 \
        --out=fig7.png [--json=fig7.json] [--data_dir=DIR]

Fig. 7 plots the standard deviation of the "layer responses": the output of
each 3x3 layer after its BN and before the other nonlinearity (ReLU or the
addition), on the CIFAR-10 test set, by layer index in network order (top)
and sorted in descending order (bottom). The models sow exactly these
(`models.BasicBlock`/`BottleneckBlock`: 'response1', 'response2'), named by
`research.activations`.

What "the std of a layer" is. The paper does not define it. A layer's
response is a (examples, height, width, channels) array; we take, for each
channel, the std over examples x positions (population std, ddof=0), and
average it over the channels (`LayerStats.std`, the number plotted). This is
the usual reading of Fig. 7 (a per-unit std; a channel is a unit of a conv
layer, shared over positions).
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
that every example of the split was counted exactly once
(`data.core.ExampleCounter`, as evaluation does). Padding examples (mask 0) never count, nor, for
multi-size canvases (`pixel_mask`, see `models.ResNet`), positions outside
each image (the model does not zero its responses there).

Beyond Fig. 7, `collect` gives the same statistics for any module output a
researcher names with a regex on module paths (flax `capture_intermediates`),
e.g. 'stage2_block1/bn1' or '.*/conv1'; scanned stages are unstacked into
'stageI_blockJ/...' names.
"""

import dataclasses
import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import distributed, evaluation
from resnet_jax.data import core as data_core
from resnet_jax.models import resnet
from resnet_jax.research.activations import Capture, named_responses

STD_DEFINITION = (
  'per-channel std over examples x positions (population, ddof=0), '
  'averaged over channels; std_all: std over all elements of the layer'
)


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
    valid = valid & resnet.mask_at(pixel_mask.astype(bool), y.shape[1:3])
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
    mesh: a mesh with a 'data' axis (default: `distributed.make_mesh()`, all devices).
    names: None for the Fig. 7 responses (`named_responses`); else which module
      outputs to capture: a regex fully matching names such as
      'stage2_block1/bn1' (scanned stages named per block), a callable on
      names, or a list of names.
    preprocess: (uint8 images, norm) -> network input; default
      `data.core.normalize` (what both dataset families' `preprocess_eval` do), or
      the images as float32 if `norm` is None.
  """

  def __init__(self, model, mesh=None, names=None, preprocess=None):
    if mesh is None:
      mesh = distributed.make_mesh()
    self.model, self.mesh = model, mesh
    self.batch_sharding = NamedSharding(mesh, P('data'))
    self.replicated = NamedSharding(mesh, P())
    self.preprocess = preprocess or data_core.normalize
    self.capture = None if names is None else Capture(names, getattr(model, 'stage_sizes', ()))
    self.names = None  # Known once the first batch was traced.
    self._fn = jax.jit(self._moments, out_shardings=self.replicated)

  BATCH_KEYS = ('image', 'mask', 'index', 'pixel_mask')  # What the device reads.

  def _moments(self, variables, norm, batch):
    images, _, v = data_core.flatten_views(batch['image'])
    x = images.astype(jnp.float32) if norm is None else self.preprocess(images, norm)
    example_mask = jnp.repeat(batch['mask'], v, axis=0)
    pixel_mask = batch.get('pixel_mask')
    kwargs = {}
    if pixel_mask is not None:
      pixel_mask = jnp.repeat(pixel_mask, v, axis=0)
      kwargs['mask'] = pixel_mask
    if self.capture is None:
      _, state = self.model.apply(variables, x, train=False, mutable=['intermediates'], **kwargs)
      named = named_responses(state['intermediates'])
    else:
      _, state = self.model.apply(
        variables,
        x,
        train=False,
        mutable=['intermediates'],
        capture_intermediates=self.capture,
        **kwargs,
      )
      named = self.capture.extract(state['intermediates'])
    if not named:
      raise ValueError(
        'no activation matched: check `names` against the module paths '
        "(e.g. 'stage1_block1/bn1', scanned stages as 'stage1_block2/...')"
      )
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
    batch = distributed.to_global(local_batch, self.batch_sharding)
    # A no-op once they are replicated on the mesh (`_stream` puts them once).
    variables, norm = jax.device_put((variables, norm), self.replicated)
    return self._fn(variables, norm, batch)

  def fetch(self, out) -> dict:
    """Host numpy {'moments': {name: moments} in network order, 'mask', 'index'}."""
    out = jax.device_get(out)
    out['moments'] = dict(zip(self.names, out['moments']))
    return out


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
    out = {
      'name': self.name,
      'count': self.count,
      'std': self.std,
      'std_all': self.std_all,
      'mean': self.mean,
      'mean_abs': self.mean_abs,
    }
    if per_channel:
      out.update(
        channel_std=self.channel_std.tolist(),
        channel_mean=self.channel_mean.tolist(),
        channel_mean_abs=self.channel_mean_abs.tolist(),
      )
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
      s_b = np.asarray(m['sum'], np.float64) + n_b * np.asarray(m.get('shift', 0.0), np.float64)
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
      name=name,
      count=int(n),
      sum=s.copy(),
      sum_sq=m2 + s * s / n,
      sum_abs=sum_abs.copy(),
      channel_mean=channel_mean,
      channel_std=np.sqrt(channel_var),
      channel_mean_abs=sum_abs / n,
      std=float(np.sqrt(channel_var).mean()),
      std_all=math.sqrt(max(var_all, 0.0)),
      mean=mean,
      mean_abs=float((sum_abs / n).mean()),
    )

  def result(self) -> dict[str, LayerStats]:
    """{name: LayerStats}, in network order."""
    return {name: self.layer(name) for name in self.names}


def _stream(
  meter: ResponseMeter, variables, batches: Iterable[dict], norm, num_examples: int | None
) -> dict[str, LayerStats]:
  stats, counter = ResponseStats(), data_core.ExampleCounter(num_examples)
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


def response_stats(
  model,
  variables,
  batches: Iterable[dict],
  norm=None,
  *,
  mesh=None,
  preprocess=None,
  num_examples: int | None = None,
) -> dict[str, LayerStats]:
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


def collect(
  model,
  variables,
  batches: Iterable[dict],
  norm=None,
  names=None,
  *,
  mesh=None,
  preprocess=None,
  num_examples: int | None = None,
) -> dict[str, LayerStats]:
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


def dataset_stats(
  model,
  variables,
  norm,
  dataset,
  split: str,
  *,
  mesh=None,
  batch_size: int | None = None,
  names=None,
) -> dict[str, LayerStats]:
  """Statistics over every example of a dataset's split (center view).

  `batch_size`: images per global batch (default: the config's evaluation
  batch); rounded up to a multiple of the devices. `names`: None for the
  Fig. 7 responses, else as `collect`.
  """
  meter = ResponseMeter(model, mesh, names, dataset.preprocess_eval)
  ndev = meter.mesh.devices.size
  per_batch = batch_size or evaluation.images_per_batch(dataset.config, dataset, 'center', ndev)
  per_batch = -(-per_batch // ndev) * ndev
  pcount, pindex = jax.process_count(), jax.process_index()
  batches = dataset.eval_batches(split, 'center', per_batch // pcount, pindex, pcount)
  return _stream(meter, variables, batches, norm, dataset.num_examples(split))
