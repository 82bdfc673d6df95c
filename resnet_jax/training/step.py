"""The train step: one train-state pytree through a pure, mesh-sharded step.

The train state is one pytree (`TrainState`) passed whole into a pure
`train_step(state, batch) -> (state, metrics)`, compiled once ahead of time
with explicit shardings over a 1-D `Mesh` whose `data` axis spans every device:
the batch is sharded, the state replicated and donated. No pmap, no
hand-written collectives: XLA inserts the gradient all-reduce.

BatchNorm and the device mesh: under `jax.jit` the model sees the *global*
batch, so by default BN statistics are computed over all examples of the step
(all devices). `model_options.bn_group_size=64` reproduces the paper's per-GPU
statistics on any number of devices (groups of 64 consecutive examples, inside
one device or spanning whole devices; see `models.GroupBatchNorm`).

Many steps per dispatch: small CIFAR nets on a GPU are bound by the per-step
launch and host round-trip, not by FLOPs. `config.steps_per_dispatch=K` runs K
steps inside one compiled call (`lax.scan` of the same `train_step` over K
batches stacked on a leading axis) and `config.input.device_resident=True`
keeps CIFAR's training images on the devices, so the host sends only K x B
example indices per call. Results agree with K single steps to float32
rounding.

Beyond the paper's recipe, all off by default: mixup/CutMix of the batch
(`training.mixing`), gradient accumulation over micro-batches
(`gradient_accumulation_steps`), and a moving average of the weights carried
in the state (`training.weight_average`).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import data, distributed, models
from resnet_jax.models import scan_layout
from resnet_jax.training import mixing, weight_average
from resnet_jax.training.optimizers import create_optimizer
from resnet_jax.training.schedules import learning_rate_schedule


@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything that training carries from step to step."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array
  # Section 4.2 warm-up: active until the smoothed training error drops below
  # the threshold; `train_error_ema` is that smoothed error.
  warmup_active: jax.Array
  train_error_ema: jax.Array
  # Section 3.4's "divide by 10 when the error plateaus": its lr scale.
  plateau: optax.contrib.ReduceLROnPlateauState
  # Input normalisation {'mean', 'std'}: evaluation needs no training data.
  norm: dict
  # The weights' moving average {'params', 'batch_stats'} (`config.ema`);
  # None, and absent from the pytree and so from checkpoints, when it is off.
  ema: Any = None

  def replace(self, **changes) -> 'TrainState':
    return dataclasses.replace(self, **changes)


def _state_children(state: TrainState):
  """The state's fields as keyed pytree children, `ema` only when it is on:
  a run without an average writes the checkpoint tree of the versions before
  it existed, and restores theirs."""
  names = tuple(
    f.name for f in dataclasses.fields(state) if f.name != 'ema' or state.ema is not None
  )
  return [(jax.tree_util.GetAttrKey(name), getattr(state, name)) for name in names], names


jax.tree_util.register_pytree_with_keys(
  TrainState, _state_children, lambda names, children: TrainState(**dict(zip(names, children)))
)


def plateau_rule(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """optax's reduce-on-plateau, stepped once per held-out evaluation.

  It runs on the host's schedule (after each evaluation), not inside the
  optimizer chain, where it would see a value at every step.
  """
  s = config.schedule
  return optax.contrib.reduce_on_plateau(
    factor=s.decay_factor,
    patience=s.plateau_patience,
    rtol=s.plateau_rtol,
    cooldown=s.plateau_cooldown,
    min_scale=s.decay_factor**s.plateau_max_decays,
  )


def initial_state(config, model, optimizer, image_shape, norm) -> TrainState:
  """A fresh train state (call under jit with `out_shardings`)."""
  rng = jax.random.key(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  params, batch_stats = models.init_variables(model, image_shape, init_rng)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=optimizer.init(params),
    rng=state_rng,
    warmup_active=jnp.asarray(config.schedule.warmup_lr > 0),
    train_error_ema=jnp.asarray(1.0 - 1.0 / model.num_classes, jnp.float32),
    plateau=plateau_rule(config).init(params),
    norm=jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), norm),
    ema=weight_average.initial(params, batch_stats) if weight_average.is_on(config.ema) else None,
  )


def cross_entropy(logits, targets, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy against integer labels (B,) or soft
  targets (B, classes), smoothed by `label_smoothing` (Szegedy et al. 2016)
  if it is set."""
  if targets.ndim == 1 and not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  if targets.ndim == 1:
    targets = jax.nn.one_hot(targets, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _micro_batches(x, k: int):
  """(B, ...) -> (k, B/k, ...), micro-batch i holding examples i, i+k, ...:
  each device's block of the batch holds its share of every micro-batch."""
  return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)


def _gradients(params, batch_stats, images, targets, *, model, config, per_block=False):
  """(loss, logits, new batch_stats), gradients of one batch; with
  `gradient_accumulation_steps` k > 1, of k micro-batches in turn (BN
  statistics per micro-batch, running statistics updated after each), the
  losses and gradients averaged: the update of one batch k times larger.
  `per_block`: compute scanned stages one block at a time (same values)."""
  smoothing = config.get('label_smoothing', 0.0)

  def apply(variables, *args, **kwargs):  # `model` as it is when traced (below).
    if per_block:
      return scan_layout.apply_per_block(model, variables, *args, **kwargs)
    return model.apply(variables, *args, **kwargs)

  def loss_fn(params, batch_stats, images, targets):
    variables = {'params': params, 'batch_stats': batch_stats}
    if config.get('freeze_batch_stats'):  # BN as in evaluation: running statistics, kept.
      logits = apply(variables, images, train=False)
      return cross_entropy(logits, targets, smoothing).mean(), (logits, batch_stats)
    logits, updates = apply(variables, images, train=True, mutable=['batch_stats'])
    return cross_entropy(logits, targets, smoothing).mean(), (logits, updates['batch_stats'])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  k = config.get('gradient_accumulation_steps', 1)
  if k == 1:
    (loss, (logits, batch_stats)), grads = grad_fn(params, batch_stats, images, targets)
    return loss, logits, batch_stats, grads
  model = model.clone(in_step_loop=True)  # Keeps XLA:CPU's convolution gradients fast in a loop.

  def micro_step(carry, batch):
    grad_sum, batch_stats = carry
    (loss, (logits, batch_stats)), grads = grad_fn(params, batch_stats, *batch)
    return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), (loss, logits)

  zeros = jax.tree.map(jnp.zeros_like, params)
  micro = (_micro_batches(images, k), _micro_batches(targets, k))
  (grad_sum, batch_stats), (losses, logits) = jax.lax.scan(micro_step, (zeros, batch_stats), micro)
  logits = jnp.swapaxes(logits, 0, 1).reshape(-1, logits.shape[-1])  # Back in batch order.
  return losses.mean(), logits, batch_stats, jax.tree.map(lambda g: g / k, grad_sum)


def train_step(
  state: TrainState, batch, *, model, optimizer, config, dataset, per_block_stages=False
):
  """One SGD step on a global batch; returns the new state and scalar metrics.
  `per_block_stages`: compute scanned stages one block at a time (same values,
  a faster step on XLA:CPU; see `trains_per_block`)."""
  s = config.schedule
  rng = jax.random.fold_in(state.rng, state.step)
  images = dataset.preprocess_train(rng, batch['image'], state.norm, config)
  labels = targets = batch['label']
  if mixing.is_on(config.mixing):
    mixing_rng = jax.random.fold_in(rng, data.core.KEY_STREAMS['mixing'])
    images, targets = mixing.mix(mixing_rng, images, labels, model.num_classes, config.mixing)
  loss, logits, batch_stats, grads = _gradients(
    state.params,
    state.batch_stats,
    images,
    targets,
    model=model,
    config=config,
    per_block=per_block_stages,
  )
  # Against each image's own label, mixed or not.
  error = jnp.mean(jnp.argmax(logits, -1) != labels)

  schedule_lr = learning_rate_schedule(config)(state.step) * state.plateau.scale
  lr = jnp.where(state.warmup_active, s.warmup_lr, schedule_lr)
  opt_state = state.opt_state._replace(
    hyperparams={**state.opt_state.hyperparams, 'learning_rate': lr}
  )
  updates, opt_state = optimizer.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  error_ema = (
    s.warmup_error_smoothing * state.train_error_ema + (1 - s.warmup_error_smoothing) * error
  )
  warmup_active = (
    state.warmup_active
    & (error_ema >= s.warmup_until_error)
    & (state.step + 1 < s.warmup_max_steps)
  )
  average = state.ema
  if average is not None:
    average = weight_average.update(average, params, batch_stats, state.step + 1, config.ema)
  new_state = state.replace(
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    warmup_active=warmup_active,
    train_error_ema=error_ema,
    ema=average,
  )
  metrics = {
    'train_loss': loss,
    'train_error': error,
    'learning_rate': lr,
    'grad_norm': optax.global_norm(grads),
  }
  return new_state, metrics


def train_steps(state: TrainState, batches, resident, *, steps: int, **step_kwargs):
  """`steps` train steps in one call; `batches` are stacked on a leading axis.

  `resident` holds the device-resident training split (empty if the batches
  carry their images); a batch of example indices is gathered from it on the
  device. With steps=1 this is `train_step` itself (no leading axis, no scan);
  otherwise the metrics come back stacked, one entry per step.
  """
  if steps > 1:  # Keeps XLA:CPU's convolution gradients fast in the loop.
    step_kwargs['model'] = step_kwargs['model'].clone(in_step_loop=True)

  def one_step(state, batch):
    return train_step(state, data.core.gather_resident(batch, resident), **step_kwargs)

  if steps == 1:
    return one_step(state, batches)
  return jax.lax.scan(one_step, state, batches)


def plateau_step(state: TrainState, holdout_error, *, config) -> TrainState:
  """Feeds one held-out error to the plateau rule (a no-op for 'piecewise')."""
  if config.schedule.kind != 'plateau':
    return state
  _, plateau = plateau_rule(config).update({}, state.plateau, value=holdout_error)
  return state.replace(plateau=plateau)


# On CPU, stages of at most this many blocks after their first train one block
# at a time: cifar_resnet20 to 56 and resnet18 to 50. cifar_resnet110 (17) was
# no faster so, and compiled in 21 s instead of 5 (docs/speed.md).
PER_BLOCK_MAX_BLOCKS = 8


def trains_per_block(model: models.ResNet, mesh: Mesh) -> bool:
  """Whether the train step computes `model`'s scanned stages one block at a
  time: on CPU devices only, where the scan's stacking of each block's saved
  activations costs more than the program's extra size (docs/speed.md), and
  only up to `PER_BLOCK_MAX_BLOCKS`, as compile time grows with depth."""
  on_cpu = all(d.platform == 'cpu' for d in mesh.devices.flat)
  deepest = max(model.stage_sizes) - 1
  return on_cpu and model.scan_blocks and deepest <= PER_BLOCK_MAX_BLOCKS


@dataclasses.dataclass
class Trainer:
  """The compiled functions of one experiment, and the shardings they use."""

  config: ml_collections.ConfigDict
  model: models.ResNet
  mesh: Mesh
  dataset: data.Dataset
  # Derived from the above in __post_init__.
  image_shape: tuple = dataclasses.field(init=False)
  optimizer: optax.GradientTransformation = dataclasses.field(init=False)
  steps_per_dispatch: int = dataclasses.field(init=False)
  per_block_stages: bool = dataclasses.field(init=False)
  state_sharding: Any = dataclasses.field(init=False)
  # The train step's input: sharded over `data` on the batch axis (the
  # second axis when K > 1 batches are stacked per call).
  batch_sharding: NamedSharding = dataclasses.field(init=False)
  replicated: NamedSharding = dataclasses.field(init=False)
  abstract_state: TrainState = dataclasses.field(init=False)
  init_fn: Any = dataclasses.field(init=False)
  train_fn: Any = dataclasses.field(init=False)
  plateau_fn: Any = dataclasses.field(init=False)

  def __post_init__(self):
    self.image_shape = tuple(self.dataset.image_shape)
    self.steps_per_dispatch = self.config.get('steps_per_dispatch', 1)
    self.per_block_stages = trains_per_block(self.model, self.mesh)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(
      self.mesh, P('data') if self.steps_per_dispatch == 1 else P(None, 'data')
    )
    self.optimizer = create_optimizer(
      self.config, models.abstract_variables(self.model, self.image_shape)['params']
    )
    init = functools.partial(
      initial_state, self.config, self.model, self.optimizer, self.image_shape
    )
    norm = {
      k: jax.ShapeDtypeStruct(s, jnp.float32)
      for k, s in self.dataset.normalization_shapes().items()
    }
    self.abstract_state = jax.eval_shape(init, norm)
    self.state_sharding = jax.tree.map(lambda _: self.replicated, self.abstract_state)
    self.init_fn = jax.jit(init, in_shardings=self.replicated, out_shardings=self.state_sharding)
    self.train_fn = jax.jit(
      functools.partial(
        train_steps,
        steps=self.steps_per_dispatch,
        model=self.model,
        optimizer=self.optimizer,
        config=self.config,
        dataset=self.dataset,
        per_block_stages=self.per_block_stages,
      ),
      in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
      out_shardings=(self.state_sharding, self.replicated),
      donate_argnums=(0,),
    )
    self.plateau_fn = jax.jit(
      functools.partial(plateau_step, config=self.config),
      in_shardings=(self.state_sharding, self.replicated),
      out_shardings=self.state_sharding,
      donate_argnums=(0,),
    )

  def batch_spec(self, batch_size: int, resident: bool = False):
    """Abstract input of one dispatch (K stacked global batches, or one), for
    ahead-of-time compilation; with `resident`, batches of example indices."""
    lead = (self.steps_per_dispatch,) if self.steps_per_dispatch > 1 else ()
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(
      lead + shape, dtype, sharding=self.batch_sharding
    )
    if resident:
      return {'index': spec((batch_size,), jnp.int32)}
    return {
      'image': spec((batch_size,) + self.image_shape, jnp.uint8),
      'label': spec((batch_size,), jnp.int32),
    }

  def sharded_abstract_state(self):
    """`abstract_state` with its shardings: the target of a restore."""
    return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      self.abstract_state,
      self.state_sharding,
    )

  def compile_train(self, batch_size: int, resident=None):
    """Compiles the train step (K steps if steps_per_dispatch=K) ahead of
    time; returns it, called as `step(state, batches, resident)`."""
    resident = resident or {}
    return self.train_fn.lower(
      self.sharded_abstract_state(), self.batch_spec(batch_size, bool(resident)), resident
    ).compile()

  def to_global(self, local_batch):
    """Per-process numpy input of one dispatch -> global `jax.Array`s, the
    batch axis sharded over `data`."""
    return distributed.to_global(local_batch, self.batch_sharding)

  def put_resident(self, arrays: dict) -> dict:
    """Host arrays (the same in every process) -> replicated device arrays."""
    return distributed.put_replicated(arrays, self.replicated)
